"""A TCP proxy for fault injection: forwards connections to a target and can cut every
connection it carries at once, after swallowing the target's answers for a moment, so that
requests the target carried out never get their answer (the client must retry them)."""
import socket
import threading
import time


class FaultProxy:
    def __init__(self, target_host, target_port, listen_port=0):
        self.target = (target_host, target_port)
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", listen_port))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = []
        self.cuts = 0
        self.closed = False
        # While set, what the target sends is dropped instead of forwarded.
        self.swallowing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections.append((client, upstream))
            for a, b, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pump, args=(a, b, answers), daemon=True).start()

    def _pump(self, source, sink, answers):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if answers and self.swallowing.is_set():
                    continue
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self, swallow_ms=0):
        """Closes every connection the proxy carries now, after dropping the target's
        answers for `swallow_ms`."""
        if swallow_ms:
            self.swallowing.set()
            time.sleep(swallow_ms / 1000)
        with self.lock:
            connections, self.connections = self.connections, []
        for pair in connections:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        self.swallowing.clear()
        self.cuts += 1

    def close(self):
        self.closed = True
        self.server.close()
        self.cut()

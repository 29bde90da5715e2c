//! A client for tests that drive the real `spool` binary: it starts the broker, speaks the
//! protocol with spool-protocol's types, and stops it.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use spool_protocol::compression::Compression;
use spool_protocol::frame::{decode_response, encode_request};
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::*;
use spool_protocol::record_batch::{RecordBatchBuilder, RecordBatches};

pub struct Server {
    pub child: Child,
    pub address: String,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_listening(data_dir, "127.0.0.1:0", extra)
    }

    /// As [`Server::start`], with `listen` for `--listen` (several listeners, or a
    /// controller listener for a node of a cluster).
    pub fn start_listening(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spool"))
            .args([
                "server",
                "--admin-listen",
                "127.0.0.1:0",
                "--listen",
                listen,
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spool starts");
        let stdout = child.stdout.take().expect("stdout");
        // A thread reads stdout (and keeps draining it, so the broker never blocks on
        // it) and sends the listener's address when it is printed.
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(address) = line.strip_prefix("spool: Kafka listener on ") {
                    let _ = found.send(address.to_string());
                }
            }
        });
        match address.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => Server { child, address },
            Err(_) => {
                // Stopped or stuck: killed, so that no node outlives a failed start.
                let _ = child.kill();
                let _ = child.wait();
                panic!("spool did not report its listener");
            }
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.address)
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "spool exited with {exit}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub stream: TcpStream,
    correlation_id: i32,
}

impl Client {
    pub fn connect(address: &str) -> Client {
        let stream = TcpStream::connect(address).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Client {
            stream,
            correlation_id: 0,
        }
    }

    /// Sends a request; `None` when the connection is gone.
    pub fn try_send(&mut self, body: RequestBody, version: i16) -> Option<i32> {
        self.correlation_id += 1;
        let header = RequestHeader {
            request_api_key: body.api_key() as i16,
            request_api_version: version,
            correlation_id: self.correlation_id,
            client_id: Some("spool-test".into()),
            unknown_tagged_fields: Vec::new(),
        };
        self.stream
            .write_all(&encode_request(&header, &body).ok()?)
            .ok()?;
        Some(self.correlation_id)
    }

    /// Reads the next response; `None` when the connection is gone.
    pub fn try_receive(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> Option<ResponseBody> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).ok()?;
        let mut frame = vec![0u8; usize::try_from(i32::from_be_bytes(size)).ok()?];
        self.stream.read_exact(&mut frame).ok()?;
        let (header, body) = decode_response(api_key, version, Bytes::from(frame)).ok()?;
        assert_eq!(
            header.correlation_id, correlation_id,
            "responses come back in request order"
        );
        Some(body)
    }

    pub fn send(&mut self, body: RequestBody, version: i16) -> i32 {
        self.try_send(body, version).expect("request sent")
    }

    pub fn receive(&mut self, api_key: ApiKey, version: i16, correlation_id: i32) -> ResponseBody {
        self.try_receive(api_key, version, correlation_id)
            .expect("response received")
    }

    pub fn call(&mut self, body: RequestBody, version: i16) -> ResponseBody {
        let api_key = body.api_key();
        let id = self.send(body, version);
        self.receive(api_key, version, id)
    }

    /// Whether the broker has closed the connection.
    /// Whether the broker closed the connection (end of stream or a reset); a read that
    /// times out means it is still open.
    pub fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spool-server-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

pub fn batch(first: usize, count: usize) -> Bytes {
    let mut builder = RecordBatchBuilder::new(Compression::Lz4);
    for i in first..first + count {
        builder
            .append(
                1_700_000_000_000 + i as i64,
                Some(format!("key-{i}").as_bytes()),
                Some(format!("value-{i}").as_bytes()),
                &[],
            )
            .unwrap();
    }
    builder.build().unwrap()
}

pub fn metadata(client: &mut Client, topic: &str) -> MetadataResponse {
    let request = MetadataRequest {
        topics: Some(vec![metadata_request::MetadataRequestTopic {
            name: Some(topic.into()),
            ..Default::default()
        }]),
        allow_auto_topic_creation: true,
        ..Default::default()
    };
    match client.call(RequestBody::Metadata(request), 12) {
        ResponseBody::Metadata(response) => response,
        other => panic!("{other:?}"),
    }
}

/// One batch for one partition.
pub fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest {
        acks,
        timeout_ms: 30_000,
        topic_data: vec![produce_request::TopicProduceData {
            name: topic.into(),
            partition_data: vec![produce_request::PartitionProduceData {
                index: partition,
                records: Some(records),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn produce(
    client: &mut Client,
    topic: &str,
    partition: i32,
    records: Bytes,
    acks: i16,
) -> produce_response::PartitionProduceResponse {
    let request = produce_request(topic, partition, acks, records);
    match client.call(RequestBody::Produce(request), 9) {
        ResponseBody::Produce(mut response) => {
            response.responses.remove(0).partition_responses.remove(0)
        }
        other => panic!("{other:?}"),
    }
}

/// A consumer's fetch of partition 0 of `topic` from `offset`, waiting up to
/// `max_wait_ms` for a byte.
pub fn fetch_request(topic: &str, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest {
        replica_id: -1,
        max_wait_ms,
        min_bytes: 1,
        max_bytes: 1 << 20,
        session_epoch: -1,
        topics: vec![fetch_request::FetchTopic {
            topic: topic.into(),
            partitions: vec![fetch_request::FetchPartition {
                partition: 0,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn fetch(
    client: &mut Client,
    topic: &str,
    offset: i64,
    max_wait_ms: i32,
) -> fetch_response::PartitionData {
    let request = fetch_request(topic, offset, max_wait_ms);
    match client.call(RequestBody::Fetch(request), 12) {
        ResponseBody::Fetch(mut response) => response.responses.remove(0).partitions.remove(0),
        other => panic!("{other:?}"),
    }
}

pub fn offsets_in(records: Option<Bytes>) -> Vec<i64> {
    RecordBatches::new(records.unwrap_or_default())
        .flat_map(|b| {
            b.unwrap()
                .records(1 << 20)
                .unwrap()
                .map(|r| r.unwrap().offset)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every record of partition 0 from offset 0 to the end, fetch after fetch.
pub fn records_of(client: &mut Client, topic: &str) -> Vec<spool_protocol::record_batch::Record> {
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let data = fetch(client, topic, offset, 0);
        let batches: Vec<_> = RecordBatches::new(data.records.unwrap_or_default())
            .map(Result::unwrap)
            .collect();
        if batches.is_empty() {
            return records;
        }
        for batch in batches {
            offset = batch.last_offset() + 1;
            records.extend(batch.records(1 << 20).unwrap().map(Result::unwrap));
        }
    }
}

//! Randomness for the metadata quorum and identifiers: Raft's election timeouts, topic,
//! incarnation and member IDs. Each thread draws from its own generator, seeded from the
//! operating system. The simulation, which runs every node on one thread, seeds that
//! thread's generator with the run's seed ([`seed_this_thread`]), so that a seed replays
//! one run.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::Uuid;

thread_local! {
    static GENERATOR: RefCell<StdRng> = RefCell::new(StdRng::from_entropy());
}

/// Makes this thread's draws follow `seed` from now on.
pub fn seed_this_thread(seed: u64) {
    GENERATOR.with(|g| *g.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// This thread's generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadGenerator;

impl RngCore for ThreadGenerator {
    fn next_u32(&mut self) -> u32 {
        GENERATOR.with(|g| g.borrow_mut().next_u32())
    }

    fn next_u64(&mut self) -> u64 {
        GENERATOR.with(|g| g.borrow_mut().next_u64())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        GENERATOR.with(|g| g.borrow_mut().fill_bytes(dest));
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        GENERATOR.with(|g| g.borrow_mut().try_fill_bytes(dest))
    }
}

/// A random (version 4) UUID; never the all-zero "no ID".
pub fn random_uuid() -> Uuid {
    let mut bytes = [0u8; 16];
    ThreadGenerator.fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid(bytes)
}

/// The quorum's runtime: tokio's, with Raft's random numbers drawn from
/// [`ThreadGenerator`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Runtime;

impl AsyncRuntime for Runtime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ThreadGenerator;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        ThreadGenerator
    }

    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_ids_again() {
        seed_this_thread(7);
        let first = (random_uuid(), random_uuid());
        seed_this_thread(7);
        assert_eq!((random_uuid(), random_uuid()), first);
        assert_ne!(first.0, first.1);
        seed_this_thread(8);
        assert_ne!(random_uuid(), first.0);
    }
}

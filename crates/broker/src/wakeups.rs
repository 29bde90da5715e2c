//! Wake-ups for long-polling fetches, per partition: a fetch waiting for `min_bytes`
//! registers on the partitions it reads, and an append wakes only the fetches registered
//! on its partition (Kafka's fetch purgatory, keyed the same way).
//!
//! A wake-up is a permit (`Notify::notify_one`), so an append that lands between a fetch's
//! registration and its wait is not lost: register, read, then wait.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::state::lock;

type Waiters = Vec<Weak<Notify>>;

#[derive(Default)]
pub struct Wakeups {
    /// Topic name → partition → the fetches waiting on it.
    waiting: Mutex<BTreeMap<String, BTreeMap<i32, Waiters>>>,
}

impl Wakeups {
    /// Registers `waiter` on every `(topic, partition)`; until [`Registration`] drops, an
    /// append to any of them wakes it. Registering again is harmless.
    pub fn register<'a>(
        &'a self,
        partitions: &[(&str, i32)],
        waiter: &Arc<Notify>,
    ) -> Registration<'a> {
        let mut waiting = lock(&self.waiting);
        for &(topic, partition) in partitions {
            let topic_waiters = match waiting.get_mut(topic) {
                Some(found) => found,
                None => waiting.entry(topic.to_string()).or_default(),
            };
            let list = topic_waiters.entry(partition).or_default();
            // Fetches that ended without deregistering (none should) are dropped here too.
            list.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), &**waiter));
            list.push(Arc::downgrade(waiter));
        }
        Registration {
            wakeups: self,
            partitions: partitions
                .iter()
                .map(|&(topic, partition)| (topic.to_string(), partition))
                .collect(),
            waiter: Arc::clone(waiter),
        }
    }

    /// Wakes every fetch registered on `(topic, partition)`; each registers again if it
    /// goes on waiting.
    pub fn wake(&self, topic: &str, partition: i32) {
        let woken = lock(&self.waiting)
            .get_mut(topic)
            .and_then(|partitions| partitions.remove(&partition));
        for waiter in woken.into_iter().flatten() {
            if let Some(waiter) = waiter.upgrade() {
                waiter.notify_one();
            }
        }
    }

    /// How many registrations are held.
    #[cfg(test)]
    fn registered(&self) -> usize {
        lock(&self.waiting)
            .values()
            .flat_map(BTreeMap::values)
            .map(Vec::len)
            .sum()
    }
}

/// A fetch's registrations; dropping it removes them.
pub struct Registration<'a> {
    wakeups: &'a Wakeups,
    partitions: Vec<(String, i32)>,
    waiter: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(&self.wakeups.waiting);
        for (topic, partition) in &self.partitions {
            let Some(topic_waiters) = waiting.get_mut(topic.as_str()) else {
                continue;
            };
            if let Some(list) = topic_waiters.get_mut(partition) {
                list.retain(|w| !std::ptr::eq(w.as_ptr(), &*self.waiter));
                if list.is_empty() {
                    topic_waiters.remove(partition);
                }
            }
            if topic_waiters.is_empty() {
                waiting.remove(topic.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_append_wakes_only_the_fetches_on_its_partition() {
        let wakeups = Wakeups::default();
        let on_a = Arc::new(Notify::new());
        let on_b = Arc::new(Notify::new());
        let _a = wakeups.register(&[("t", 0)], &on_a);
        let _b = wakeups.register(&[("t", 1), ("u", 0)], &on_b);
        assert_eq!(wakeups.registered(), 3);

        // The wake comes before the wait: the permit keeps it.
        wakeups.wake("t", 0);
        let quick = Duration::from_millis(200);
        assert!(tokio::time::timeout(quick, on_a.notified()).await.is_ok());
        assert!(
            tokio::time::timeout(quick, on_b.notified()).await.is_err(),
            "another partition's append does not wake it"
        );
        wakeups.wake("u", 0);
        assert!(tokio::time::timeout(quick, on_b.notified()).await.is_ok());
    }

    #[test]
    fn registrations_go_when_their_fetch_ends() {
        let wakeups = Wakeups::default();
        let waiter = Arc::new(Notify::new());
        {
            let _first = wakeups.register(&[("t", 0), ("t", 1)], &waiter);
            let _again = wakeups.register(&[("t", 0)], &waiter);
            assert_eq!(wakeups.registered(), 2, "registering again adds nothing");
        }
        assert_eq!(wakeups.registered(), 0);
        assert!(lock(&wakeups.waiting).is_empty());
    }
}

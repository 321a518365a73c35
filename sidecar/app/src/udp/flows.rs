//! The flow table of a UDP listener: one entry per client flow, bounded in number and in idle
//! time. Pure bookkeeping (no sockets, an explicit clock), so its rules are tested directly.
//!
//! Activity is kept in an atomic beside each entry ([`Activity`]) because the task relaying the
//! app's replies marks the flow active too, without touching the table. The table keeps its
//! flows in least-recently-used order ([`lru`]), so a new flow at `max_flows` evicts in O(1)
//! instead of scanning every flow for the one idle the longest.

use std::{
    hash::Hash,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use lru::LruCache;

/// Flows the app replied on since the table last looked, oldest reply first.
type Replied<K> = Arc<Mutex<Vec<K>>>;

/// When a flow last carried a datagram, in ticks of the listener's clock (microseconds), and
/// the way a reply, relayed by another task, moves the flow to the recent end of its table.
#[derive(Debug)]
pub struct Activity<K> {
    last: AtomicU64,
    /// Whether the flow waits in `replied` already (so each flow is queued at most once).
    queued: AtomicBool,
    key: K,
    replied: Replied<K>,
}

impl<K: Clone> Activity<K> {
    /// Marks the flow active at `now` (a reply: the table moves it on its next operation).
    pub fn touch(&self, now: u64) {
        self.last.fetch_max(now, Ordering::Relaxed);
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.replied
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.key.clone());
        }
    }

    /// The last time the flow was active.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }
}

/// A table of at most `capacity` flows, in least-recently-used order: a datagram from the load
/// balancer moves its flow to the recent end at once, a reply on the table's next operation
/// (before that operation, so the order stays exact), and a new flow at `capacity` evicts the
/// flow at the old end, in O(1).
#[derive(Debug)]
pub struct FlowTable<K: Eq + Hash, V> {
    flows: LruCache<K, (Arc<Activity<K>>, V)>,
    replied: Replied<K>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> FlowTable<K, V> {
    /// An empty table holding at most `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            flows: LruCache::unbounded(),
            replied: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Moves the flows replied on since the last operation to the recent end, in the order of
    /// their last activity (a flow queued by an early reply may have had a later one since).
    fn take_replies(&mut self) {
        let replied =
            std::mem::take(&mut *self.replied.lock().unwrap_or_else(PoisonError::into_inner));
        let mut replied: Vec<(u64, K)> = replied
            .into_iter()
            .filter_map(|key| {
                let (activity, _) = self.flows.peek(&key)?;
                activity.queued.store(false, Ordering::Release);
                Some((activity.last(), key))
            })
            .collect();
        replied.sort_by_key(|&(last, _)| last);
        for (_, key) in replied {
            self.flows.promote(&key);
        }
    }

    /// The flow of `key`, marked active at `now` (and moved to the recent end).
    pub fn get(&mut self, key: &K, now: u64) -> Option<&mut V> {
        self.take_replies();
        let (activity, value) = self.flows.get_mut(key)?;
        activity.last.fetch_max(now, Ordering::Relaxed);
        Some(value)
    }

    /// Whether `key` has a flow (without marking it active).
    pub fn contains(&self, key: &K) -> bool {
        self.flows.contains(key)
    }

    /// Makes room for one more flow: if the table is full, removes and returns the flow idle the
    /// longest (the least recently used).
    pub fn make_room(&mut self) -> Option<(K, V)> {
        self.take_replies();
        if self.flows.len() < self.capacity {
            return None;
        }
        self.flows.pop_lru().map(|(key, (_, value))| (key, value))
    }

    /// Adds a flow active at `now`, first evicting (and returning) the flow idle the longest if
    /// the table is full. Returns the new flow's activity, for its reply task.
    pub fn insert(&mut self, key: K, value: V, now: u64) -> (Arc<Activity<K>>, Option<(K, V)>) {
        let evicted = if self.flows.contains(&key) {
            self.take_replies();
            None
        } else {
            self.make_room()
        };
        let activity = Arc::new(Activity {
            last: AtomicU64::new(now),
            queued: AtomicBool::new(false),
            key: key.clone(),
            replied: Arc::clone(&self.replied),
        });
        self.flows.push(key, (Arc::clone(&activity), value));
        (activity, evicted)
    }

    /// Removes and returns the flows idle for `idle` or longer at `now` (a periodic sweep, not
    /// one per datagram).
    pub fn expire(&mut self, now: u64, idle: u64) -> Vec<(K, V)> {
        self.take_replies();
        let expired: Vec<K> = self
            .flows
            .iter()
            .filter(|(_, (activity, _))| now.saturating_sub(activity.last()) >= idle)
            .map(|(key, _)| key.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|key| self.flows.pop(&key).map(|(_, value)| (key, value)))
            .collect()
    }

    /// Removes every flow.
    pub fn clear(&mut self) -> usize {
        let n = self.flows.len();
        self.flows.clear();
        n
    }

    /// How many flows are open.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is open.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_full_table_evicts_the_flow_idle_longest() {
        let mut table = FlowTable::new(2);
        table.insert("a", 1, 10);
        table.insert("b", 2, 20);
        // "a" is used again: "b" is now the one idle the longest.
        assert_eq!(table.get(&"a", 30), Some(&mut 1));
        let (_, evicted) = table.insert("c", 3, 40);
        assert_eq!(evicted, Some(("b", 2)));
        assert_eq!(table.len(), 2);
        assert!(table.contains(&"a") && table.contains(&"c"));
    }

    #[test]
    fn replies_keep_a_flow_alive() {
        let mut table = FlowTable::new(8);
        let (activity, _) = table.insert("a", (), 0);
        table.insert("b", (), 0);
        activity.touch(900);
        let expired: Vec<_> = table
            .expire(1000, 500)
            .into_iter()
            .map(|(k, ())| k)
            .collect();
        assert_eq!(expired, ["b"]);
        assert!(table.contains(&"a"));
        assert_eq!(table.expire(1400, 500).len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_later_reply_counts_even_when_its_flow_was_queued_by_an_earlier_one() {
        let mut table = FlowTable::new(2);
        let (a, _) = table.insert("a", (), 0);
        let (c, _) = table.insert("c", (), 0);
        // Between two operations of the table: replies on a, then c, then a again.
        a.touch(1);
        c.touch(2);
        a.touch(3);
        let (_, evicted) = table.insert("new", (), 4);
        assert_eq!(
            evicted,
            Some(("c", ())),
            "c has been idle since 2, a only since 3"
        );
    }

    #[test]
    fn reinserting_a_key_evicts_nothing() {
        let mut table = FlowTable::new(1);
        table.insert("a", 1, 0);
        let (_, evicted) = table.insert("a", 2, 5);
        assert_eq!(evicted, None);
        assert_eq!(table.get(&"a", 6), Some(&mut 2));
    }

    /// One step of a random workload.
    #[derive(Debug, Clone)]
    enum Op {
        Datagram(u8),
        Reply(u8),
        Tick(u64),
        /// Time passes without an expiry sweep (replies queue up meanwhile).
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16).prop_map(Op::Datagram),
            (0u8..16).prop_map(Op::Reply),
            (0u64..200).prop_map(Op::Tick),
            (1u64..20).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Against a model: the table never exceeds its capacity, an eviction always takes a
        /// flow idle at least as long as every other, and expiry takes exactly the flows idle
        /// for the timeout.
        #[test]
        fn matches_a_model(capacity in 1usize..6, idle in 1u64..300, ops in prop::collection::vec(op(), 1..200)) {
            let mut table = FlowTable::new(capacity);
            let mut model: std::collections::BTreeMap<u8, u64> = Default::default();
            let mut activities: std::collections::BTreeMap<u8, Arc<Activity<u8>>> = Default::default();
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Datagram(key) => {
                        if table.get(&key, now).is_some() {
                            model.insert(key, now);
                        } else {
                            let (activity, evicted) = table.insert(key, (), now);
                            if let Some((gone, ())) = evicted {
                                let gone_at = model.remove(&gone).expect("evicted a known flow");
                                prop_assert!(model.values().all(|&t| t >= gone_at));
                                activities.remove(&gone);
                            }
                            model.insert(key, now);
                            activities.insert(key, activity);
                        }
                    }
                    Op::Reply(key) => {
                        if let Some(activity) = activities.get(&key) {
                            activity.touch(now);
                            model.insert(key, now);
                        }
                    }
                    Op::Wait(by) => now += by,
                    Op::Tick(by) => {
                        now += by;
                        let mut expired: Vec<u8> = table.expire(now, idle).into_iter().map(|(k, ())| k).collect();
                        expired.sort_unstable();
                        let want: Vec<u8> = model.iter().filter(|&(_, &t)| now - t >= idle).map(|(&k, _)| k).collect();
                        prop_assert_eq!(&expired, &want);
                        for key in want {
                            model.remove(&key);
                            activities.remove(&key);
                        }
                    }
                }
                prop_assert!(table.len() <= capacity);
                prop_assert_eq!(table.len(), model.len());
            }
        }
    }
}

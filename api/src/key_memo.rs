//! A bounded, expiring map from an API key's SHA-256 to what was learnt about it, shared by
//! the negative cache of unknown keys and the positive cache of live ones
//! ([`crate::auth`]). Never the key itself: only its digest is held.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What the map holds per digest, until its expiry.
pub struct KeyMemo<V> {
    entries: Mutex<HashMap<[u8; 32], (V, Instant)>>,
    ttl: Duration,
    capacity: usize,
}

/// Locks a mutex, taking the data of a poisoned one (a panic elsewhere leaves a map that is
/// still a valid cache).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<V: Clone> KeyMemo<V> {
    /// A map whose entries live `ttl`, holding at most `capacity` (at least one).
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Whether entries are kept at all (a zero TTL turns the map off).
    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The value remembered for this digest less than the TTL ago.
    pub fn get(&self, hash: &[u8; 32]) -> Option<V> {
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        match entries.get(hash) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.remove(hash);
                None
            }
            None => None,
        }
    }

    /// Remembers `value` for this digest. Bounded: when full, expired entries are dropped,
    /// and if that frees nothing the whole map is (a flood of distinct keys then costs what
    /// it cost without the map, never memory).
    pub fn insert(&self, hash: [u8; 32], value: V) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(hash, (value, now + self.ttl));
    }

    /// Forgets this digest.
    pub fn remove(&self, hash: &[u8; 32]) {
        lock(&self.entries).remove(hash);
    }

    /// Entries held (tests, metrics).
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_stay_bounded_and_can_be_forgotten() {
        let memo = KeyMemo::new(Duration::from_millis(50), 3);
        memo.insert([1; 32], 'a');
        assert_eq!(memo.get(&[1; 32]), Some('a'));
        assert_eq!(memo.get(&[2; 32]), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(memo.get(&[1; 32]), None, "expired");
        for i in 0..10u8 {
            memo.insert([i; 32], 'b');
            assert!(memo.len() <= 3, "bounded: {}", memo.len());
        }
        assert_eq!(memo.get(&[9; 32]), Some('b'), "the newest is held");
        memo.remove(&[9; 32]);
        assert_eq!(memo.get(&[9; 32]), None, "forgotten");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let memo = KeyMemo::new(Duration::ZERO, 3);
        memo.insert([1; 32], ());
        assert!(memo.is_empty());
        assert!(!memo.enabled());
    }
}

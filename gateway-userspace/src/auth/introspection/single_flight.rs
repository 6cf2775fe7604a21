//! Coalescing of concurrent introspections of the same token: the first request to miss
//! (the leader) asks the IdP; requests for the same token that arrive while it waits (the
//! followers) wait for its answer instead of asking again, whichever worker they run on.
//!
//! The table is shared by the workers of one snapshot (a mutex held only to look up or insert
//! a key, never across an await; taken only after a cache miss for an opaque token, which is
//! about to wait for the network anyway). The answer crosses workers as a plain value through a
//! `tokio::sync::watch` channel, which does not care which runtime polls it; each worker then
//! fills its own token cache. A leader that goes away without an answer (its client hung up)
//! closes the channel: one of its followers becomes the leader.

use std::{collections::HashMap, future::Future, hash::Hash, sync::Mutex};

use tokio::sync::watch;

/// In-flight calls by key.
pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, watch::Receiver<Option<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { calls: Mutex::default() }
    }
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight").finish_non_exhaustive()
    }
}

/// Removes the leader's entry however its call ends (answered, failed or dropped).
struct Lead<'a, K: Eq + Hash, V> {
    flight: &'a SingleFlight<K, V>,
    key: K,
    tx: watch::Sender<Option<V>>,
}

impl<K: Eq + Hash, V> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        let mut calls = self.flight.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if calls.get(&self.key).is_some_and(|rx| rx.same_channel(&self.tx.subscribe())) {
            calls.remove(&self.key);
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `call` unless a call for `key` is already under way, in which case its answer is
    /// awaited. Returns the answer and whether it was another request's (coalesced).
    pub async fn run<F, Fut>(&self, key: K, call: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        loop {
            let joined = {
                let mut calls = self.calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match calls.get(&key) {
                    Some(rx) => Ok(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        calls.insert(key.clone(), rx);
                        Err(Lead { flight: self, key: key.clone(), tx })
                    }
                }
            };
            match joined {
                Ok(mut rx) => {
                    if let Ok(answer) = rx.wait_for(Option::is_some).await
                        && let Some(v) = answer.clone()
                    {
                        return (v, true);
                    }
                    // The leader went away without an answer: try again (perhaps as the leader).
                }
                Err(lead) => {
                    let v = call().await;
                    lead.tx.send_replace(Some(v.clone()));
                    return (v, false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_calls_for_one_key_make_one_call() {
        let flight = Arc::new(SingleFlight::<u32, u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flight, calls, mut release) = (flight.clone(), calls.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(7, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = release.wait_for(|r| *r).await;
                        42
                    })
                    .await
            }));
        }
        tokio::task::yield_now().await;
        release_tx.send_replace(true);
        let mut coalesced = 0;
        for t in tasks {
            let (v, joined) = t.await.unwrap();
            assert_eq!(v, 42);
            coalesced += usize::from(joined);
        }
        assert_eq!((calls.load(Ordering::SeqCst), coalesced), (1, 7));
        // Done: the next call for the key is a new one.
        assert_eq!(flight.run(7, || async { 43 }).await, (43, false));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_that_goes_away_hands_over_to_a_follower() {
        let flight = Arc::new(SingleFlight::<u32, u32>::default());
        let leader = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run(1, std::future::pending::<u32>).await })
        };
        tokio::task::yield_now().await;
        let follower = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run(1, || async { 5 }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(follower.await.unwrap(), (5, false));
    }
}

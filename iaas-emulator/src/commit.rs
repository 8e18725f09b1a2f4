//! Group commit: many requests' changes made durable by one redb transaction.
//!
//! A request mutates the cache under the state lock, then [`Committer::stage`]
//! drains its writes, numbers them (a commit sequence) and queues them, still
//! under the lock, so queue order is mutation order. The request releases the
//! lock and waits in [`Committer::wait`] until its sequence is durable. A
//! single committer thread owns the writing: it takes every batch queued so
//! far, merges them in arrival order (later writes to a key win) and commits
//! them in one transaction with one fsync, then publishes the highest durable
//! sequence, waking every waiter at once. Acknowledged still means durable.
//!
//! Reads wait too: a request that changed nothing waits for the sequence of
//! the newest write it could have seen, so no client is ever shown (and can
//! act on) a change that is not durable yet.
//!
//! When a transaction fails, every later batch was computed on top of the
//! failed changes, so the committer takes the state lock, drops everything
//! still queued, reloads the cache from the store and declares the whole range
//! from the failed group's first sequence to the last one handed out failed:
//! every request in it (reads that saw it included) answers 5000, and no
//! change is acknowledged over a reloaded state.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{ApiError, ApiResult, EmuError};
use crate::state::State;
use crate::store::{Store, Write};

/// What a request waits for before it answers: the commit sequence of its
/// own writes, or of the newest writes it saw when it wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a request must wait for its ticket before it answers"]
pub struct Ticket {
    seq: u64,
    wrote: bool,
}

/// Counters of the committer (`GET /admin/stats/commits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStats {
    /// Store transactions committed, one fsync each.
    pub transactions: u64,
    /// Request batches (one per mutating request or job step) they carried.
    pub batches: u64,
    /// Rows written, after merging writes to the same key in a transaction.
    pub rows: u64,
    /// Largest number of batches in one transaction (failed ones included).
    pub largest_group: u64,
    /// Transactions that failed.
    pub failed_transactions: u64,
    /// Batches failed with them, including those staged after the failed group.
    pub failed_batches: u64,
}

/// One request's writes with its commit sequence.
struct Batch {
    seq: u64,
    writes: Vec<Write>,
}

/// Sequence bookkeeping; changed only with the state lock held.
#[derive(Debug, Default)]
struct Seqs {
    /// The last sequence handed out.
    last: u64,
    /// The newest sequence whose writes the cache reflects (after a failed
    /// commit, the last durable one).
    visible: u64,
}

/// The fate of sequences, published by the committer.
#[derive(Debug, Clone, Default)]
struct Resolved {
    /// Every sequence up to here is either durable or failed.
    upto: u64,
    /// Failed ranges (inclusive). One per failed transaction, so tiny.
    failed: Vec<(u64, u64)>,
}

impl Resolved {
    fn is_failed(&self, seq: u64) -> bool {
        self.failed.iter().any(|&(lo, hi)| lo <= seq && seq <= hi)
    }
}

/// A test-only failpoint: called with each transaction's rows before it is
/// written; an error fails the transaction as a store error would.
#[cfg(test)]
pub(crate) type CommitHook = Box<dyn FnMut(&[Write]) -> Result<(), EmuError> + Send>;

/// The group committer: stages requests' writes and tells them when durable.
pub struct Committer {
    store: Store,
    seqs: Arc<Mutex<Seqs>>,
    tx: Mutex<Option<mpsc::Sender<Batch>>>,
    resolved: watch::Receiver<Resolved>,
    stats: Arc<Mutex<CommitStats>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    #[cfg(test)]
    hook: Arc<Mutex<Option<CommitHook>>>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("seqs", &self.seqs)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded values are plain
/// counters that a panicking holder cannot leave half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Committer {
    /// Starts the committer thread for `store`. `state` must be the cache the
    /// requests stage from: a failed commit reloads it.
    pub fn start(
        store: Store,
        state: Arc<tokio::sync::Mutex<State>>,
    ) -> Result<Committer, EmuError> {
        let seqs = Arc::new(Mutex::new(Seqs::default()));
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let (tx, rx) = mpsc::channel();
        let (resolved_tx, resolved) = watch::channel(Resolved::default());
        #[cfg(test)]
        let hook: Arc<Mutex<Option<CommitHook>>> = Arc::new(Mutex::new(None));
        let worker = Worker {
            rx,
            store: store.clone(),
            state,
            seqs: Arc::clone(&seqs),
            resolved: resolved_tx,
            stats: Arc::clone(&stats),
            #[cfg(test)]
            hook: Arc::clone(&hook),
        };
        // A dedicated OS thread, not a blocking task: it lives as long as the
        // emulator and its fsyncs must never wait for a pool slot.
        let thread = std::thread::Builder::new()
            .name("store-committer".into())
            .spawn(move || worker.run())
            .map_err(|e| EmuError::io("starting the store committer thread", e))?;
        Ok(Committer {
            store,
            seqs,
            tx: Mutex::new(Some(tx)),
            resolved,
            stats,
            thread: Mutex::new(Some(thread)),
            #[cfg(test)]
            hook,
        })
    }

    /// Call with the state lock held, after a request's changes to `st` (the
    /// cache given to [`Committer::start`]): queues them for the committer,
    /// or, when there are none, notes the newest writes the request could
    /// have seen. Release the lock, then [`Committer::wait`] on the ticket.
    /// On error the changes are dropped from the cache.
    pub fn stage(&self, st: &mut State) -> ApiResult<Ticket> {
        // drain_writes rolls the changes back itself when it fails.
        let writes = st
            .drain_writes()
            .map_err(|e| ApiError::internal(format!("store: {e}, the change was not made")))?;
        let mut seqs = lock(&self.seqs);
        if writes.is_empty() {
            return Ok(Ticket {
                seq: seqs.visible,
                wrote: false,
            });
        }
        let seq = seqs.last + 1;
        let sent = lock(&self.tx)
            .as_ref()
            .is_some_and(|tx| tx.send(Batch { seq, writes }).is_ok());
        if !sent {
            // The committer is gone (shutdown, or it died): nothing staged can
            // become durable any more, so the cache goes back to the store.
            drop(seqs);
            if let Err(e) = st.load(&self.store) {
                tracing::error!(error = %e, "reloading state failed");
            }
            return Err(ApiError::internal(
                "store committer stopped, the change was not made",
            ));
        }
        seqs.last = seq;
        seqs.visible = seq;
        Ok(Ticket { seq, wrote: true })
    }

    /// Waits until the ticket's sequence is durable; 5000 when its commit
    /// failed (for a read: when what it saw was never made durable).
    pub async fn wait(&self, ticket: Ticket) -> ApiResult<()> {
        if ticket.seq == 0 {
            return Ok(());
        }
        let mut rx = self.resolved.clone();
        let failed = match rx.wait_for(|r| r.upto >= ticket.seq).await {
            Ok(r) => r.is_failed(ticket.seq),
            Err(_) => {
                // The committer ended without resolving this sequence: it was
                // never written.
                return Err(ApiError::internal(
                    "store committer stopped before the change was durable",
                ));
            }
        };
        match (failed, ticket.wrote) {
            (false, _) => Ok(()),
            (true, true) => Err(ApiError::internal(
                "store commit failed, the change was not made",
            )),
            (true, false) => Err(ApiError::internal(
                "store commit failed; this answer was computed from changes that were rolled back",
            )),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CommitStats {
        *lock(&self.stats)
    }

    /// Stops taking batches; returns the thread to join, which ends once it
    /// has written what was already queued.
    pub fn close(&self) -> Option<JoinHandle<()>> {
        drop(lock(&self.tx).take());
        lock(&self.thread).take()
    }

    /// Installs (or removes) the test failpoint.
    #[cfg(test)]
    pub(crate) fn set_hook(&self, hook: Option<CommitHook>) {
        *lock(&self.hook) = hook;
    }
}

/// The committer thread's side.
struct Worker {
    rx: mpsc::Receiver<Batch>,
    store: Store,
    state: Arc<tokio::sync::Mutex<State>>,
    seqs: Arc<Mutex<Seqs>>,
    resolved: watch::Sender<Resolved>,
    stats: Arc<Mutex<CommitStats>>,
    #[cfg(test)]
    hook: Arc<Mutex<Option<CommitHook>>>,
}

impl Worker {
    fn run(self) {
        // Ends when every sender is gone (Committer closed or dropped) and
        // the queue is empty.
        while let Ok(first) = self.rx.recv() {
            let mut group = vec![first];
            while let Ok(b) = self.rx.try_recv() {
                group.push(b);
            }
            let lo = group[0].seq;
            let hi = group[group.len() - 1].seq;
            let batches = group.len() as u64;
            let rows = merge(group);
            {
                let mut s = lock(&self.stats);
                s.largest_group = s.largest_group.max(batches);
            }
            match self.write(&rows) {
                Ok(()) => {
                    {
                        let mut s = lock(&self.stats);
                        s.transactions += 1;
                        s.batches += batches;
                        s.rows += rows.len() as u64;
                    }
                    self.resolved.send_modify(|r| r.upto = hi);
                }
                Err(e) => self.fail(lo, e),
            }
        }
    }

    fn write(&self, rows: &[Write]) -> Result<(), EmuError> {
        #[cfg(test)]
        if let Some(hook) = lock(&self.hook).as_mut() {
            hook(rows)?;
        }
        self.store.write_blocking(rows)
    }

    /// Fails the group starting at `lo` and everything staged after it.
    fn fail(&self, lo: u64, e: EmuError) {
        tracing::error!(error = %e, "store commit failed; failing its requests and every later change, reloading state");
        // No request holds the state lock while it waits for the committer,
        // so taking it here cannot deadlock. With it held nothing new is
        // staged: the queue and `last` are final for this failure.
        let mut st = self.state.blocking_lock();
        let mut seqs = lock(&self.seqs);
        while self.rx.try_recv().is_ok() {}
        let upto = seqs.last;
        if let Err(e) = st.load(&self.store) {
            tracing::error!(error = %e, "reloading state after a failed commit failed");
        }
        // The cache now holds exactly what was durable before `lo`.
        seqs.visible = lo - 1;
        {
            let mut s = lock(&self.stats);
            s.failed_transactions += 1;
            s.failed_batches += upto - lo + 1;
        }
        self.resolved.send_modify(|r| {
            r.upto = upto;
            r.failed.push((lo, upto));
        });
    }
}

/// Merges a group's writes in arrival order: the last write to a key wins.
fn merge(group: Vec<Batch>) -> Vec<Write> {
    let mut latest: BTreeMap<(&'static str, String), Option<Vec<u8>>> = BTreeMap::new();
    for batch in group {
        for (table, key, value) in batch.writes {
            latest.insert((table, key), value);
        }
    }
    latest
        .into_iter()
        .map(|((table, key), value)| (table, key, value))
        .collect()
}

#[cfg(test)]
mod tests;

//! Backends of a listener and the choice among them.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::config::BalanceMode;

/// Live state of a backend, kept across applies while its id and address
/// stay the same (so a re-apply neither forgets health nor resets counts).
#[derive(Debug)]
pub struct BackendState {
    /// Last health verdict; new backends start up so a fresh LB serves at once.
    pub up: AtomicBool,
    /// Open connections (L4) or in-flight requests (L7).
    pub active: AtomicUsize,
    /// Consecutive probe successes.
    pub successes: AtomicU32,
    /// Consecutive probe failures.
    pub failures: AtomicU32,
}

impl Default for BackendState {
    fn default() -> Self {
        BackendState {
            up: AtomicBool::new(true),
            active: AtomicUsize::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }
}

impl BackendState {
    /// Records one probe result; returns the new verdict when it flipped.
    pub fn record(&self, ok: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            let n = self
                .successes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !self.up.load(Ordering::Relaxed) && n >= healthy {
                self.up.store(true, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.successes.store(0, Ordering::Relaxed);
            let n = self
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if self.up.load(Ordering::Relaxed) && n >= unhealthy {
                self.up.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }
}

/// One backend of a listener.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `lbb-…` id.
    pub id: String,
    /// Where to dial.
    pub addr: SocketAddr,
    /// Relative share (0 is treated as 1).
    pub weight: u32,
    /// L7 policy the backend serves (empty: default backend).
    pub policy_id: String,
    /// Health and load, shared with connections and the prober.
    pub state: Arc<BackendState>,
}

impl Backend {
    fn weight(&self) -> u64 {
        u64::from(self.weight.max(1))
    }

    /// Whether new traffic may go here.
    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Relaxed)
    }
}

/// Counts a connection or request against a backend while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<BackendState>);

impl ActiveGuard {
    /// Starts counting.
    pub fn new(state: &Arc<BackendState>) -> Self {
        state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(state.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Chooses backends for one listener; holds the round-robin state.
#[derive(Debug)]
pub struct Balancer {
    mode: BalanceMode,
    /// Smooth weighted round robin: current weight per backend index.
    current: Mutex<Vec<i64>>,
    /// Tie breaker for leastconn.
    turn: AtomicUsize,
}

impl Balancer {
    /// A balancer for `n` backends.
    pub fn new(mode: BalanceMode, n: usize) -> Self {
        Balancer {
            mode,
            current: Mutex::new(vec![0; n]),
            turn: AtomicUsize::new(0),
        }
    }

    /// Picks among `group` (indices into `backends`) the up backends, in
    /// preference order: the balance mode's choice first, then the others
    /// as fallbacks should a dial fail. Empty when none is up.
    pub fn order(&self, backends: &[Backend], group: &[usize], client: IpAddr) -> Vec<usize> {
        let up: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| backends.get(i).is_some_and(Backend::is_up))
            .collect();
        if up.is_empty() {
            return up;
        }
        let first = match self.mode {
            BalanceMode::RoundRobin => self.round_robin(backends, &up),
            BalanceMode::LeastConn => self.least_conn(backends, &up),
            BalanceMode::Source => source_hash(backends, &up, client),
        };
        let mut order = Vec::with_capacity(up.len());
        order.push(first);
        // Fallbacks rotate from the choice so retries also spread.
        let pos = up.iter().position(|&i| i == first).unwrap_or(0);
        order.extend(up[pos + 1..].iter().chain(&up[..pos]).copied());
        order
    }

    fn round_robin(&self, backends: &[Backend], up: &[usize]) -> usize {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.len() < backends.len() {
            cur.resize(backends.len(), 0);
        }
        let total: i64 = up.iter().map(|&i| backends[i].weight() as i64).sum();
        let mut best = up[0];
        for &i in up {
            cur[i] += backends[i].weight() as i64;
            if cur[i] > cur[best] {
                best = i;
            }
        }
        cur[best] -= total;
        best
    }

    fn least_conn(&self, backends: &[Backend], up: &[usize]) -> usize {
        // Compare active/weight by cross-multiplying to stay in integers.
        let load = |i: usize| {
            (
                backends[i].state.active.load(Ordering::Relaxed) as u128,
                u128::from(backends[i].weight()),
            )
        };
        let mut least: Vec<usize> = Vec::new();
        let mut best = (u128::MAX, 1u128);
        for &i in up {
            let (a, w) = load(i);
            let lhs = a * best.1;
            let rhs = best.0.saturating_mul(w);
            if least.is_empty() || lhs < rhs {
                least.clear();
                least.push(i);
                best = (a, w);
            } else if lhs == rhs {
                least.push(i);
            }
        }
        let t = self.turn.fetch_add(1, Ordering::Relaxed);
        least[t % least.len()]
    }
}

/// Weighted rendezvous hashing: every client IP ranks every backend, the
/// highest score wins; adding or removing one backend only moves the
/// clients that backend gains or loses.
fn source_hash(backends: &[Backend], up: &[usize], client: IpAddr) -> usize {
    let client = client.to_canonical();
    let mut best = up[0];
    let mut best_score = f64::NEG_INFINITY;
    for &i in up {
        let b = &backends[i];
        // DefaultHasher::new() has fixed keys: the choice is stable across
        // restarts of the same build.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        client.hash(&mut h);
        b.id.hash(&mut h);
        b.addr.hash(&mut h);
        let x = h.finish();
        // Map to (0, 1] and score -w/ln(u): larger weight, larger score.
        let u = ((x >> 11) as f64 + 1.0) / ((1u64 << 53) as f64);
        let score = -(b.weight() as f64) / u.ln();
        if score > best_score {
            best_score = score;
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Backend {
                id: format!("lbb-{i}"),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight: w,
                policy_id: String::new(),
                state: Arc::default(),
            })
            .collect()
    }

    #[test]
    fn weighted_round_robin_spreads_by_weight() {
        let b = backends(&[1, 3]);
        let bal = Balancer::new(BalanceMode::RoundRobin, 2);
        let mut counts = [0; 2];
        for _ in 0..8 {
            counts[bal.order(&b, &[0, 1], "127.0.0.1".parse().unwrap())[0]] += 1;
        }
        assert_eq!(counts, [2, 6]);
    }

    #[test]
    fn down_backends_are_skipped() {
        let b = backends(&[1, 1]);
        b[0].state.up.store(false, Ordering::Relaxed);
        let bal = Balancer::new(BalanceMode::RoundRobin, 2);
        for _ in 0..4 {
            assert_eq!(
                bal.order(&b, &[0, 1], "127.0.0.1".parse().unwrap()),
                vec![1]
            );
        }
        b[1].state.up.store(false, Ordering::Relaxed);
        assert!(
            bal.order(&b, &[0, 1], "127.0.0.1".parse().unwrap())
                .is_empty()
        );
    }

    #[test]
    fn health_counts_flip_verdicts() {
        let s = BackendState::default();
        assert_eq!(s.record(false, 2, 2), None);
        assert_eq!(s.record(false, 2, 2), Some(false));
        assert_eq!(s.record(true, 2, 2), None);
        assert_eq!(s.record(true, 2, 2), Some(true));
    }

    #[test]
    fn source_is_sticky_and_least_conn_prefers_idle() {
        let b = backends(&[1, 1, 1]);
        let bal = Balancer::new(BalanceMode::Source, 3);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = bal.order(&b, &[0, 1, 2], ip)[0];
        for _ in 0..10 {
            assert_eq!(bal.order(&b, &[0, 1, 2], ip)[0], first);
        }
        let lc = Balancer::new(BalanceMode::LeastConn, 3);
        let _g0 = ActiveGuard::new(&b[0].state);
        let _g2 = ActiveGuard::new(&b[2].state);
        assert_eq!(lc.order(&b, &[0, 1, 2], ip)[0], 1);
    }
}

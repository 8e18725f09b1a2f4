//! The tokio runtime every long-running binary of the suite runs on, sized
//! for an idle footprint of a few MiB rather than for a many-core server.
//!
//! `#[tokio::main]` starts one worker thread per core, each with a 2 MiB
//! stack, and glibc gives every thread that allocates its own malloc arena
//! (64 MiB of address space each, and resident pages that are rarely given
//! back). These processes are controllers and node agents that wait on the
//! network almost all the time, so two workers are plenty, and the arena
//! count is what decides idle RSS. Measured by `footprint`
//! (tests/src/bin/footprint.rs, docs/BENCHMARKS.md).
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     suite_runtime::runtime::block_on(async {
//!         // the binary's async main body
//!         std::process::ExitCode::SUCCESS
//!     })
//! }
//! ```

use std::future::Future;

/// Worker threads when `SUITE_WORKER_THREADS` does not say otherwise.
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// Stack size of runtime threads. The suite's async code keeps little on
/// the stack; 1 MiB leaves ample room for deep serde and TLS call chains
/// while halving the default 2 MiB.
pub const THREAD_STACK_SIZE: usize = 1 << 20;

/// Upper bound on tokio's blocking pool (file I/O, DNS, `spawn_blocking`).
/// Idle blocking threads exit after tokio's keep-alive, so this caps bursts
/// only; the default of 512 would let a burst pin hundreds of stacks.
pub const MAX_BLOCKING_THREADS: usize = 64;

/// glibc malloc arenas kept when `MALLOC_ARENA_MAX` is not set.
pub const DEFAULT_ARENA_MAX: i32 = 2;

/// How the runtime is built; [`RuntimeOptions::from_env`] gives the suite's
/// defaults with the environment's overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Worker threads of the multi-threaded scheduler (at least 1).
    pub worker_threads: usize,
    /// Stack size of every runtime thread, bytes.
    pub thread_stack_size: usize,
    /// Cap on the blocking pool.
    pub max_blocking_threads: usize,
    /// glibc malloc arena limit; `None` leaves malloc alone.
    pub malloc_arena_max: Option<i32>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            worker_threads: DEFAULT_WORKER_THREADS,
            thread_stack_size: THREAD_STACK_SIZE,
            max_blocking_threads: MAX_BLOCKING_THREADS,
            malloc_arena_max: Some(DEFAULT_ARENA_MAX),
        }
    }
}

impl RuntimeOptions {
    /// The defaults, overridden by `SUITE_WORKER_THREADS` (a positive
    /// number) for busy deployments, and leaving malloc alone when the
    /// operator set glibc's own `MALLOC_ARENA_MAX`. An unparsable value is
    /// an error naming the variable, not a silent default.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(
            std::env::var("SUITE_WORKER_THREADS").ok().as_deref(),
            std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        )
    }

    fn from_vars(workers: Option<&str>, arena_env_set: bool) -> Result<Self, String> {
        let mut o = RuntimeOptions::default();
        if let Some(w) = workers.map(str::trim).filter(|w| !w.is_empty()) {
            o.worker_threads = match w.parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    return Err(format!(
                        "SUITE_WORKER_THREADS={w:?}: expected a number of threads from 1 to 1024"
                    ));
                }
            };
        }
        if arena_env_set {
            // glibc already read it at startup; mallopt would override it.
            o.malloc_arena_max = None;
        }
        Ok(o)
    }

    /// Applies the malloc setting and builds the runtime (all drivers on).
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if let Some(n) = self.malloc_arena_max {
            limit_malloc_arenas(n);
        }
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.worker_threads.max(1))
            .thread_stack_size(self.thread_stack_size)
            .max_blocking_threads(self.max_blocking_threads.max(1))
            .enable_all()
            .build()
    }
}

/// Builds the suite's runtime ([`RuntimeOptions::from_env`]) and runs `f`
/// on it to completion: the body of a binary's `main`. Exits with status 2
/// and a message when the environment is invalid or the runtime cannot be
/// built (no threads or no epoll: nothing else could work either).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let rt = RuntimeOptions::from_env()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            o.build()
                .map_err(|e| format!("cannot start the async runtime: {e}"))
        })
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2);
        });
    rt.block_on(f)
}

/// Caps glibc's malloc arenas at `n` (`mallopt(M_ARENA_MAX, n)`). Must run
/// before threads start allocating to have its full effect. A no-op on
/// other C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt only updates glibc's allocator parameters under its
    // own lock; it takes plain integers and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n.max(1));
    }
}

/// Caps glibc's malloc arenas (no-op: not glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas(_n: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_small() {
        let o = RuntimeOptions::from_vars(None, false).unwrap();
        assert_eq!(o, RuntimeOptions::default());
        assert_eq!(o.worker_threads, 2);
        assert_eq!(o.malloc_arena_max, Some(2));
    }

    #[test]
    fn worker_override_is_checked_and_named() {
        assert_eq!(
            RuntimeOptions::from_vars(Some(" 8 "), false)
                .unwrap()
                .worker_threads,
            8
        );
        for bad in ["0", "-1", "many", "5000"] {
            let e = RuntimeOptions::from_vars(Some(bad), false).unwrap_err();
            assert!(e.contains("SUITE_WORKER_THREADS"), "{e}");
        }
        // Empty means unset.
        assert_eq!(
            RuntimeOptions::from_vars(Some(""), false)
                .unwrap()
                .worker_threads,
            2
        );
    }

    #[test]
    fn operator_arena_setting_wins() {
        assert_eq!(
            RuntimeOptions::from_vars(None, true)
                .unwrap()
                .malloc_arena_max,
            None
        );
    }

    #[test]
    fn built_runtime_runs_tasks() {
        let rt = RuntimeOptions::default().build().unwrap();
        let v = rt.block_on(async { tokio::spawn(async { 40 + 2 }).await.unwrap() });
        assert_eq!(v, 42);
    }
}

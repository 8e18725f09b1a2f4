//! The tokio runtime every long-running binary of the suite runs on, sized
//! for an idle footprint of a few MiB rather than for a many-core server.
//!
//! `#[tokio::main]` starts one worker thread per core, each with a 2 MiB
//! stack, and glibc gives every thread that allocates its own malloc arena
//! (64 MiB of address space each, and resident pages that are rarely given
//! back). These processes are controllers and node agents that wait on the
//! network almost all the time, so two workers are plenty, and the arena
//! count is what decides idle RSS. A trimmer thread also hands freed heap
//! pages back every 10 s, so the peak of a burst does not stay resident.
//! Measured by `footprint`
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

/// How often free heap memory is handed back to the kernel when
/// `SUITE_MALLOC_TRIM_SECS` does not say otherwise.
pub const DEFAULT_TRIM_SECS: u64 = 10;

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
    /// Period of `malloc_trim(0)`; `None` never trims. glibc keeps the
    /// pages a burst of work freed (a resync of 1,000 Services, a startup
    /// listing) resident until something trims them; a controller that
    /// then idles would carry its peak forever.
    pub malloc_trim_every: Option<std::time::Duration>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            worker_threads: DEFAULT_WORKER_THREADS,
            thread_stack_size: THREAD_STACK_SIZE,
            max_blocking_threads: MAX_BLOCKING_THREADS,
            malloc_arena_max: Some(DEFAULT_ARENA_MAX),
            malloc_trim_every: Some(std::time::Duration::from_secs(DEFAULT_TRIM_SECS)),
        }
    }
}

impl RuntimeOptions {
    /// The defaults, overridden by `SUITE_WORKER_THREADS` (a positive
    /// number) for busy deployments, and leaving malloc alone when the
    /// operator set glibc's own `MALLOC_ARENA_MAX`. An unparsable value is
    /// an error naming the variable, not a silent default.
    /// `SUITE_MALLOC_TRIM_SECS` sets the trim period (0: never).
    pub fn from_env() -> Result<Self, String> {
        let mut o = Self::from_vars(
            std::env::var("SUITE_WORKER_THREADS").ok().as_deref(),
            std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        )?;
        if let Ok(v) = std::env::var("SUITE_MALLOC_TRIM_SECS") {
            o.malloc_trim_every = parse_trim(&v)?;
        }
        Ok(o)
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

    /// Applies the malloc settings and builds the runtime (all drivers on).
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        if let Some(n) = self.malloc_arena_max {
            limit_malloc_arenas(n);
        }
        if let Some(every) = self.malloc_trim_every {
            spawn_trimmer(every)?;
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

/// `SUITE_MALLOC_TRIM_SECS`: seconds between trims, 0 for never.
fn parse_trim(v: &str) -> Result<Option<std::time::Duration>, String> {
    match v.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= 86_400 => Ok(Some(std::time::Duration::from_secs(n))),
        _ => Err(format!(
            "SUITE_MALLOC_TRIM_SECS={v:?}: expected seconds from 0 (never) to 86400"
        )),
    }
}

/// Starts the thread that hands free heap pages back every `every`: a
/// plain thread with a small stack, asleep between trims (a trim of an
/// idle heap takes microseconds).
fn spawn_trimmer(every: std::time::Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .stack_size(64 << 10)
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                trim_heap();
            }
        })
        .map(|_| ())
}

/// Returns free pages of every malloc arena to the kernel (`malloc_trim(0)`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim_heap() {
    // SAFETY: malloc_trim takes glibc's arena locks itself and only
    // releases memory that is free; it touches no allocation of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns free heap pages to the kernel (no-op: not glibc).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() {}

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
    fn trim_period_is_checked_and_named() {
        assert_eq!(parse_trim("0"), Ok(None));
        assert_eq!(
            parse_trim(" 5 "),
            Ok(Some(std::time::Duration::from_secs(5)))
        );
        for bad in ["-1", "soon", "100000"] {
            assert!(
                parse_trim(bad)
                    .unwrap_err()
                    .contains("SUITE_MALLOC_TRIM_SECS")
            );
        }
        // A trim with live and freed allocations around is harmless.
        let keep: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 << 10]).collect();
        drop((0..64).map(|_| vec![0u8; 64 << 10]).collect::<Vec<_>>());
        trim_heap();
        assert!(
            keep.iter()
                .enumerate()
                .all(|(i, v)| v.iter().all(|b| *b == i as u8))
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

//! The walk's step runner: numbered progress lines as steps run, and a summary
//! table at the end (step, result, time, IaaS calls).

use std::fmt::Write as _;
use std::future::Future;
use std::time::{Duration, Instant};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the detail says what was shown.
    Passed(String),
    /// Failed with this error.
    Failed(String),
    /// Not run, with the reason (e.g. needs root).
    Skipped(String),
}

/// One row of the summary.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// Section (component) name.
    pub section: String,
    /// Step name.
    pub name: String,
    /// Outcome.
    pub outcome: Outcome,
    /// Wall time.
    pub elapsed: Duration,
    /// IaaS API calls made during the step.
    pub calls: u64,
}

/// Runs steps, printing progress, and keeps their reports.
pub struct Walk {
    section: String,
    reports: Vec<StepReport>,
    calls: Box<dyn Fn() -> u64 + Send + Sync>,
    started: Instant,
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk")
            .field("section", &self.section)
            .field("steps", &self.reports.len())
            .finish()
    }
}

impl Walk {
    /// A walk whose call counter is read with `calls` (total IaaS calls so far).
    pub fn new(calls: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Walk {
            section: String::new(),
            reports: Vec::new(),
            calls: Box::new(calls),
            started: Instant::now(),
        }
    }

    /// Starts a section (a component).
    pub fn section(&mut self, name: &str) {
        self.section = name.to_string();
        println!("\n== {name}");
    }

    /// Runs one step. The future returns a one-line detail on success.
    pub async fn step<F>(&mut self, name: &str, fut: F) -> bool
    where
        F: Future<Output = anyhow::Result<String>>,
    {
        let n = self.reports.len() + 1;
        print!("[{n:>2}] {name} ... ");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let calls_before = (self.calls)();
        let t0 = Instant::now();
        let result = fut.await;
        let elapsed = t0.elapsed();
        let calls = (self.calls)().saturating_sub(calls_before);
        let outcome = match result {
            Ok(detail) => {
                println!("ok ({}; {calls} calls) {detail}", fmt_duration(elapsed));
                Outcome::Passed(detail)
            }
            Err(e) => {
                println!("FAILED ({})\n     {e:#}", fmt_duration(elapsed));
                Outcome::Failed(format!("{e:#}"))
            }
        };
        let ok = matches!(outcome, Outcome::Passed(_));
        self.reports.push(StepReport {
            section: self.section.clone(),
            name: name.to_string(),
            outcome,
            elapsed,
            calls,
        });
        ok
    }

    /// Records a step that was not run, and why.
    pub fn skip(&mut self, name: &str, why: &str) {
        let n = self.reports.len() + 1;
        println!("[{n:>2}] {name} ... skipped: {why}");
        self.reports.push(StepReport {
            section: self.section.clone(),
            name: name.to_string(),
            outcome: Outcome::Skipped(why.to_string()),
            elapsed: Duration::ZERO,
            calls: 0,
        });
    }

    /// The reports so far.
    pub fn reports(&self) -> &[StepReport] {
        &self.reports
    }

    /// Whether every step that ran passed.
    pub fn all_passed(&self) -> bool {
        !self
            .reports
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    /// The summary table as text.
    pub fn summary(&self) -> String {
        let w_sec = self
            .reports
            .iter()
            .map(|r| r.section.len())
            .max()
            .unwrap_or(7)
            .max(7);
        let w_name = self
            .reports
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{:<w_sec$}  {:<w_name$}  {:<7}  {:>9}  {:>5}",
            "section", "step", "result", "time", "calls"
        );
        let _ = writeln!(out, "{}", "-".repeat(w_sec + w_name + 32));
        for r in &self.reports {
            let result = match r.outcome {
                Outcome::Passed(_) => "ok",
                Outcome::Failed(_) => "FAILED",
                Outcome::Skipped(_) => "skipped",
            };
            let _ = writeln!(
                out,
                "{:<w_sec$}  {:<w_name$}  {:<7}  {:>9}  {:>5}",
                r.section,
                r.name,
                result,
                fmt_duration(r.elapsed),
                r.calls
            );
        }
        let passed = self
            .reports
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Passed(_)))
            .count();
        let failed = self
            .reports
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
            .count();
        let skipped = self.reports.len() - passed - failed;
        let total_calls: u64 = self.reports.iter().map(|r| r.calls).sum();
        let _ = writeln!(out, "{}", "-".repeat(w_sec + w_name + 32));
        let _ = writeln!(
            out,
            "{passed} passed, {failed} failed, {skipped} skipped in {} with {total_calls} IaaS calls",
            fmt_duration(self.started.elapsed())
        );
        for r in &self.reports {
            if let Outcome::Skipped(why) = &r.outcome {
                let _ = writeln!(out, "  skipped {}: {why}", r.name);
            }
        }
        out
    }
}

/// `12 ms`, `1.52 s`.
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn summary_counts_each_outcome() {
        let mut w = Walk::new(|| 0);
        w.section("demo");
        assert!(w.step("good", async { Ok("fine".to_string()) }).await);
        assert!(!w.step("bad", async { anyhow::bail!("broken") }).await);
        w.skip("later", "needs root");
        let s = w.summary();
        assert!(s.contains("1 passed, 1 failed, 1 skipped"), "{s}");
        assert!(s.contains("skipped later: needs root"), "{s}");
        assert!(!w.all_passed());
    }
}

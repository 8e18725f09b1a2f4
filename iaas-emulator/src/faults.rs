//! Fault injection and per-action call statistics.
//!
//! A [`FaultConfig`] comes from the config file (`faults:`), from
//! `PUT /admin/faults` (JSON, when the admin endpoint is enabled) or from
//! [`crate::Emulator::set_faults`]. Everything is off by default.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Every fault the emulator can inject. Unknown fields are rejected so a typo
/// in a test's fault spec fails loudly instead of silently injecting nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Extra latency added to every API call, uniformly drawn from `min..=max` ms.
    pub latency_ms: Option<LatencyRange>,
    /// Calls answered with an error code instead of being executed (checked
    /// after authentication, before the action runs, so nothing changes).
    pub errors: Vec<ErrorFault>,
    /// Request quota: beyond `max_calls` per sliding `window_ms`, calls get
    /// ret_code 2500 "request quota exceeded".
    pub throttle: Option<Throttle>,
    /// Jobs that fail (ret_code 5000 in the job) instead of doing their work;
    /// the resources roll back to their pre-job state.
    pub job_failures: Vec<JobFault>,
    /// Jobs that stay `working` until the fault is cleared (no matching
    /// `stuck` entry left in the config), then complete normally.
    pub stuck: Vec<StuckFault>,
    /// Overrides the configured delay between job steps (pending, working, done).
    pub job_delay_ms: Option<u64>,
}

/// An inclusive latency range in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyRange {
    /// Lower bound.
    pub min: u64,
    /// Upper bound (>= min).
    pub max: u64,
}

/// An injected API error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorFault {
    /// Action name, or `*` for every action.
    pub action: String,
    /// The ret_code to answer with (for example 5100 server busy).
    pub code: i32,
    /// Probability 0..=1 that a matching call fails.
    #[serde(default = "one")]
    pub rate: f64,
    /// How many more times to inject; absent means unlimited.
    #[serde(default)]
    pub remaining: Option<u64>,
    /// Message to answer with; a generic one naming the fault otherwise.
    #[serde(default)]
    pub message: Option<String>,
}

/// A sliding-window request quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    /// Calls allowed per window.
    pub max_calls: u32,
    /// Window length in ms.
    pub window_ms: u64,
}

/// An injected job failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFault {
    /// Job action (the API action that created the job), or `*`.
    pub action: String,
    /// Probability 0..=1.
    #[serde(default = "one")]
    pub rate: f64,
    /// How many more jobs to fail; absent means unlimited.
    #[serde(default)]
    pub remaining: Option<u64>,
}

/// Jobs held in `working`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckFault {
    /// Job action, or `*`.
    pub action: String,
    /// How many more jobs to hold; absent means every matching job.
    #[serde(default)]
    pub remaining: Option<u64>,
}

fn one() -> f64 {
    1.0
}

fn matches(pattern: &str, action: &str) -> bool {
    pattern == "*" || pattern == action
}

fn rate_ok(rate: f64) -> bool {
    (0.0..=1.0).contains(&rate)
}

impl FaultConfig {
    /// Checks ranges; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(l) = self.latency_ms
            && l.min > l.max
        {
            return Err(format!("latency_ms: min {} > max {}", l.min, l.max));
        }
        for (i, e) in self.errors.iter().enumerate() {
            if !rate_ok(e.rate) {
                return Err(format!("errors[{i}].rate: {} is not within 0..1", e.rate));
            }
            if e.code == 0 {
                return Err(format!("errors[{i}].code: 0 is success, not an error"));
            }
        }
        for (i, j) in self.job_failures.iter().enumerate() {
            if !rate_ok(j.rate) {
                return Err(format!(
                    "job_failures[{i}].rate: {} is not within 0..1",
                    j.rate
                ));
            }
        }
        if let Some(t) = self.throttle
            && t.window_ms == 0
        {
            return Err("throttle.window_ms: must be > 0".to_string());
        }
        Ok(())
    }
}

/// Call counters of one action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionStats {
    /// Calls received (after the action name was read).
    pub calls: u64,
    /// Calls answered with a non-zero ret_code.
    pub errors: u64,
    /// Answers per ret_code (0 included).
    pub by_ret_code: BTreeMap<i32, u64>,
}

/// Live fault state: the config plus the counters it consumes.
#[derive(Debug, Default)]
pub struct FaultState {
    config: FaultConfig,
    window: VecDeque<Instant>,
}

/// Decrements an optional remaining count; returns false when exhausted.
fn take(remaining: &mut Option<u64>) -> bool {
    match remaining {
        None => true,
        Some(0) => false,
        Some(n) => {
            *n -= 1;
            true
        }
    }
}

impl FaultState {
    /// The current config (remaining counts as consumed so far).
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Replaces the config (validated by the caller) and resets the throttle window.
    pub fn set(&mut self, config: FaultConfig) {
        self.config = config;
        self.window.clear();
    }

    /// Latency to add to this call.
    pub fn latency(&self) -> Option<Duration> {
        let l = self.config.latency_ms?;
        if l.max == 0 {
            return None;
        }
        Some(Duration::from_millis(
            rand::rng().random_range(l.min..=l.max),
        ))
    }

    /// Records a call against the quota; true when it exceeds it.
    pub fn throttled(&mut self, now: Instant) -> bool {
        let Some(t) = self.config.throttle else {
            return false;
        };
        let window = Duration::from_millis(t.window_ms);
        while let Some(front) = self.window.front() {
            if now.duration_since(*front) >= window {
                self.window.pop_front();
            } else {
                break;
            }
        }
        if self.window.len() >= t.max_calls as usize {
            return true;
        }
        self.window.push_back(now);
        false
    }

    /// An injected error for this action, if one fires.
    pub fn injected_error(&mut self, action: &str) -> Option<ApiError> {
        let mut rng = rand::rng();
        for e in self.config.errors.iter_mut() {
            if matches(&e.action, action)
                && e.remaining != Some(0)
                && rng.random_bool(e.rate)
                && take(&mut e.remaining)
            {
                let message = e.message.clone().unwrap_or_else(|| {
                    format!("injected fault: {action} answered with {}", e.code)
                });
                return Some(ApiError::new(e.code, message));
            }
        }
        None
    }

    /// Whether a job of this action should fail.
    pub fn job_fails(&mut self, action: &str) -> bool {
        let mut rng = rand::rng();
        self.config.job_failures.iter_mut().any(|f| {
            matches(&f.action, action)
                && f.remaining != Some(0)
                && rng.random_bool(f.rate)
                && take(&mut f.remaining)
        })
    }

    /// Whether a job of this action entering `working` is held there.
    pub fn job_sticks(&mut self, action: &str) -> bool {
        self.config
            .stuck
            .iter_mut()
            .any(|s| matches(&s.action, action) && take(&mut s.remaining))
    }

    /// Whether a held job must keep waiting (a matching `stuck` entry is still configured).
    pub fn still_stuck(&self, action: &str) -> bool {
        self.config.stuck.iter().any(|s| matches(&s.action, action))
    }

    /// Delay between job steps.
    pub fn job_delay(&self, default: Duration) -> Duration {
        self.config
            .job_delay_ms
            .map(Duration::from_millis)
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_shape() {
        let json = r#"{
            "latency_ms": {"min": 1, "max": 5},
            "errors": [{"action": "CreateVolumes", "code": 5100, "rate": 1.0, "remaining": 2}],
            "throttle": {"max_calls": 3, "window_ms": 1000},
            "job_failures": [{"action": "AttachVolumes", "rate": 0.5}],
            "stuck": [{"action": "*", "remaining": 1}],
            "job_delay_ms": 0
        }"#;
        let c: FaultConfig = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        assert_eq!(c.errors[0].remaining, Some(2));
        assert_eq!(c.job_failures[0].rate, 0.5);
        assert_eq!(c.job_delay_ms, Some(0));
        let yaml = "errors:\n  - action: '*'\n    code: 5000\n";
        let y: FaultConfig = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(y.errors[0].rate, 1.0);
        assert!(serde_json::from_str::<FaultConfig>(r#"{"eror": []}"#).is_err());
        let bad: FaultConfig =
            serde_json::from_str(r#"{"errors":[{"action":"*","code":5000,"rate":2}]}"#).unwrap();
        assert!(bad.validate().unwrap_err().contains("errors[0].rate"));
    }

    #[test]
    fn remaining_counts_down() {
        let mut s = FaultState::default();
        s.set(FaultConfig {
            errors: vec![ErrorFault {
                action: "A".into(),
                code: 5100,
                rate: 1.0,
                remaining: Some(2),
                message: None,
            }],
            ..Default::default()
        });
        assert!(s.injected_error("B").is_none());
        assert_eq!(s.injected_error("A").unwrap().code, 5100);
        assert!(s.injected_error("A").is_some());
        assert!(s.injected_error("A").is_none());
    }

    #[test]
    fn throttle_window() {
        let mut s = FaultState::default();
        s.set(FaultConfig {
            throttle: Some(Throttle {
                max_calls: 2,
                window_ms: 1000,
            }),
            ..Default::default()
        });
        let t0 = Instant::now();
        assert!(!s.throttled(t0));
        assert!(!s.throttled(t0));
        assert!(s.throttled(t0));
        assert!(!s.throttled(t0 + Duration::from_millis(1001)));
    }

    #[test]
    fn stuck_until_cleared() {
        let mut s = FaultState::default();
        s.set(FaultConfig {
            stuck: vec![StuckFault {
                action: "X".into(),
                remaining: Some(1),
            }],
            ..Default::default()
        });
        assert!(s.job_sticks("X"));
        assert!(!s.job_sticks("X"));
        assert!(s.still_stuck("X"));
        s.set(FaultConfig::default());
        assert!(!s.still_stuck("X"));
    }
}

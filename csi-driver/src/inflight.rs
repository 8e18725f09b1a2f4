//! At most one operation per volume at a time.
//!
//! The CO retries aggressively; a second call for a volume whose first call
//! is still running gets ABORTED (the spec's answer) instead of racing it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The set of volumes with an operation in flight.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; releases the volume when dropped,
/// including when the handler returns early or panics.
#[derive(Debug)]
pub struct InFlightGuard {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key` (a volume or snapshot id, or a name), or answers ABORTED.
    pub fn claim(&self, key: &str) -> Result<InFlightGuard> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !busy.insert(key.to_string()) {
            return Err(Error::Aborted(key.to_string()));
        }
        Ok(InFlightGuard {
            busy: Arc::clone(&self.busy),
            key: key.to_string(),
        })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_aborted_until_release() {
        let f = InFlight::default();
        let g = f.claim("vol-a").expect("first");
        assert!(matches!(f.claim("vol-a"), Err(Error::Aborted(_))));
        let _other = f.claim("vol-b").expect("other volume");
        drop(g);
        f.claim("vol-a").expect("after release");
    }
}

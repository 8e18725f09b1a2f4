//! IaaS call counts read from the emulator's per-action stats, for the
//! benchmarks' "calls per ..." figures.

use std::collections::BTreeMap;

use iaas_emulator::Emulator;

/// Calls per action since the emulator's stats were last reset.
pub fn per_action(emu: &Emulator) -> BTreeMap<String, u64> {
    emu.stats()
        .into_iter()
        .filter(|(_, s)| s.calls > 0)
        .map(|(a, s)| (a, s.calls))
        .collect()
}

/// All calls.
pub fn total(c: &BTreeMap<String, u64>) -> u64 {
    c.values().sum()
}

/// Calls that may change the cloud (everything but Describe*).
pub fn writes(c: &BTreeMap<String, u64>) -> u64 {
    c.iter()
        .filter(|(a, _)| !a.starts_with("Describe"))
        .map(|(_, n)| n)
        .sum()
}

/// `Action n, Action m`, divided by `div` (one decimal when fractional).
pub fn by_action(c: &BTreeMap<String, u64>, div: f64) -> String {
    if c.is_empty() {
        return "none".into();
    }
    c.iter()
        .map(|(a, n)| {
            let v = *n as f64 / div;
            if v.fract() == 0.0 {
                format!("{a} {v:.0}")
            } else {
                format!("{a} {v:.1}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

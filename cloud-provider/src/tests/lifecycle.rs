use serde_json::json;

use super::{instance, node, ready};
use crate::lifecycle::{LifecycleAction, decide, with_shutdown_taint};
use crate::provider::TAINT_SHUTDOWN;

fn shutdown_taint() -> serde_json::Value {
    json!({"spec": {"taints": [{"key": TAINT_SHUTDOWN, "effect": "NoSchedule"}]}})
}

#[test]
fn decisions() {
    let running = instance("i-1", "n", "172.30.1.11", "running");
    let stopped = instance("i-1", "n", "172.30.1.11", "stopped");
    let suspended = instance("i-1", "n", "172.30.1.11", "suspended");
    let terminated = instance("i-1", "n", "172.30.1.11", "terminated");
    let ceased = instance("i-1", "n", "172.30.1.11", "ceased");
    let not_ready = node("n", ready("False"));
    let unknown = node("n", ready("Unknown"));
    let ready_node = node("n", ready("True"));
    let mut tainted_nr = node("n", ready("False"));
    tainted_nr.spec = node("n", shutdown_taint()).spec;
    let mut tainted_ready = node("n", ready("True"));
    tainted_ready.spec = node("n", shutdown_taint()).spec;

    assert!(matches!(
        decide(&not_ready, None),
        LifecycleAction::Delete(_)
    ));
    assert!(
        matches!(decide(&unknown, Some(&terminated)), LifecycleAction::Delete(w) if w.contains("terminated"))
    );
    assert!(matches!(
        decide(&not_ready, Some(&ceased)),
        LifecycleAction::Delete(_)
    ));
    assert_eq!(decide(&not_ready, Some(&stopped)), LifecycleAction::Taint);
    assert_eq!(decide(&not_ready, Some(&suspended)), LifecycleAction::Taint);
    assert_eq!(decide(&tainted_nr, Some(&stopped)), LifecycleAction::Keep);
    assert_eq!(
        decide(&tainted_nr, Some(&running)),
        LifecycleAction::Untaint
    );
    assert_eq!(decide(&not_ready, Some(&running)), LifecycleAction::Keep);
    // Ready nodes are never deleted, whatever the cloud says.
    assert_eq!(decide(&ready_node, None), LifecycleAction::Keep);
    assert_eq!(
        decide(&ready_node, Some(&terminated)),
        LifecycleAction::Keep
    );
    assert_eq!(
        decide(&tainted_ready, Some(&stopped)),
        LifecycleAction::Untaint
    );
}

#[test]
fn taint_editing_keeps_other_taints() {
    let n = node(
        "n",
        json!({"spec": {"taints": [{"key": "a", "effect": "NoExecute"}]}}),
    );
    let t = with_shutdown_taint(&n, true);
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].key, TAINT_SHUTDOWN);
    assert_eq!(t[1].effect, "NoSchedule");
    let mut n2 = n.clone();
    n2.spec.as_mut().unwrap().taints = Some(t);
    let t = with_shutdown_taint(&n2, false);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].key, "a");
}

//! The Kubernetes API calls the `ingress-controller` makes, as RBAC sees
//! them. The ingress manifests grant exactly these (checked by
//! `tests/tests/manifests.rs`); a new call in the code needs a line here.

/// Every call, as `(apiGroup, resource, verb)`. Watches (kube-runtime
/// `Controller`, reflectors) list then watch; writes are merge patches.
pub const API_CALLS: &[(&str, &str, &str)] = &[
    // The work queue, the re-read before dropping the finalizer, the
    // finalizer/annotation patch and the status patch.
    ("networking.k8s.io", "ingresses", "get"),
    ("networking.k8s.io", "ingresses", "list"),
    ("networking.k8s.io", "ingresses", "watch"),
    ("networking.k8s.io", "ingresses", "patch"),
    ("networking.k8s.io", "ingresses/status", "patch"),
    ("networking.k8s.io", "ingressclasses", "list"),
    ("networking.k8s.io", "ingressclasses", "watch"),
    // Reflected inputs of the translation.
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    // TLS Secrets only (field selector type=kubernetes.io/tls).
    ("", "secrets", "list"),
    ("", "secrets", "watch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "patch"),
];

/// The subset of [`API_CALLS`] made only in the leader Lease's namespace
/// (a namespaced Role grants them).
pub const LEADER_ELECTION_CALLS: &[(&str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "patch"),
];

//! The Kubernetes API calls the cloud-controller-manager makes, as RBAC sees
//! them. `manifests/ccm/rbac.yaml` grants exactly these (checked by
//! `tests/tests/manifests.rs`); a new call in the code needs a line here.

/// Every call, as `(apiGroup, resource, verb)`. Derived from the code:
/// watches (kube-runtime `Controller`, `watcher`, reflectors) list then
/// watch; writes are merge/strategic patches, never updates.
pub const API_CALLS: &[(&str, &str, &str)] = &[
    // nodes: node + route + service controllers watch; lifecycle and route
    // passes list; init and the shutdown taint patch; lifecycle deletes
    // nodes whose instance is gone.
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("", "nodes", "patch"),
    ("", "nodes", "delete"),
    // addresses, conditions (NetworkUnavailable) on the status subresource.
    ("", "nodes/status", "patch"),
    // Service controller: watch, re-read before dropping the finalizer,
    // finalizer patch, ingress status patch; the batched resync lists.
    ("", "services", "get"),
    ("", "services", "list"),
    ("", "services", "watch"),
    ("", "services", "patch"),
    ("", "services/status", "patch"),
    // Backends follow EndpointSlices (externalTrafficPolicy: Local).
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    // TLS certificates named by a Service annotation, read by name.
    ("", "secrets", "get"),
    // kube-runtime's event recorder (events.k8s.io/v1): create, then patch a series.
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
    // Leader election (kube-lease-manager: get, create, server-side apply).
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "patch"),
];

/// The subset of [`API_CALLS`] made only in the leader Lease's namespace:
/// granted by a namespaced Role, not the ClusterRole.
pub const LEADER_ELECTION_CALLS: &[(&str, &str, &str)] = &[
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "patch"),
];

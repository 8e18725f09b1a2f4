//! Helpers for the watches that feed the controllers' caches.

use kube::Resource;

/// The annotation `kubectl apply` keeps: a second copy of the whole object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no controller of the suite reads from a cached object:
/// `managedFields` and kubectl's last-applied copy. On big clusters they are
/// most of an object's bytes, so the reflector stores stay a fraction of the
/// size (use as `watcher(..).modify(slim)`).
pub fn slim<K: Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    #[test]
    fn slim_keeps_everything_else() {
        let mut n = Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                annotations: Some(
                    [
                        (LAST_APPLIED.to_string(), "{}".to_string()),
                        ("keep".to_string(), "yes".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        slim(&mut n);
        assert_eq!(n.metadata.managed_fields, None);
        assert_eq!(
            n.metadata.annotations,
            Some([("keep".to_string(), "yes".to_string())].into())
        );
        assert_eq!(n.metadata.name.as_deref(), Some("n1"));
    }
}

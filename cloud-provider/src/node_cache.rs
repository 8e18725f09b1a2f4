//! One watch of Nodes for every controller of the CCM.
//!
//! The node, lifecycle, route and service controllers all read Nodes. Each
//! used to keep its own watch (or list every Node each period): on a
//! 5,000-node cluster that is several full copies of every Node in memory,
//! and a full listing per period. Here one reflector keeps one slimmed copy
//! ([`slim_node`]) in a [`Store`] every controller reads, and tells each
//! controller only what it reacts to, computed per Node as events arrive
//! (never by rescanning the store):
//!
//! - the node controller gets the Nodes that need initialisation;
//! - the route controller is woken when a Node's pod CIDRs, InternalIP or
//!   deletion changes (heartbeats do not wake it);
//! - the Service controller is told when the set of nodes eligible as LB
//!   backends changes.
//!
//! A re-list (the watch restarted) is compared as a whole when it ends, so
//! a change missed while the watch was down still fires, and an unchanged
//! re-list fires nothing.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use lb_controller::nodes::PerNode;
use tokio::sync::Notify;

use crate::provider;

/// The route controller's inputs from one Node: pod CIDRs and InternalIP
/// (`None` when it has neither, or is being deleted: no route either way).
fn routing(n: &Node) -> Option<(Vec<String>, Option<String>)> {
    if n.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let spec = n.spec.as_ref();
    let mut cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if let Some(c) = spec.and_then(|s| s.pod_cidr.clone())
        && !cidrs.contains(&c)
    {
        cidrs.push(c);
    }
    let ip = provider::internal_ip(n).map(str::to_string);
    (!cidrs.is_empty() || ip.is_some()).then_some((cidrs, ip))
}

/// Drops what no CCM controller reads from a cached Node: `managedFields`,
/// kubectl's last-applied copy and `status.images` (the node's image list,
/// often the largest part of a Node).
pub fn slim_node(n: &mut Node) {
    lb_controller::watch::slim(n);
    if let Some(s) = n.status.as_mut() {
        s.images = None;
    }
}

/// The shared Node cache: the store and the route controller's wake-up.
#[derive(Clone)]
pub struct NodeCache {
    /// Every Node, slimmed. Wait for it with [`NodeCache::ready`], never
    /// with `Store::wait_until_ready`: that wakes only one of several
    /// concurrent waiters, and the node controller's work queue is one.
    pub store: Store<Node>,
    /// Notified when a routing input of some Node changed.
    pub routes_changed: Arc<Notify>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for NodeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCache")
            .field("nodes", &self.store.len())
            .finish_non_exhaustive()
    }
}

impl NodeCache {
    /// Every cached Node (shared, not copied).
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        self.store.state()
    }

    /// Waits for the first complete listing (false: the cache is gone).
    /// Any number of tasks may wait at once.
    pub async fn ready(&self) -> bool {
        self.ready.clone().wait_for(|r| *r).await.is_ok()
    }
}

/// What the cache feeds the controllers that react to single Nodes.
pub struct NodeFeeds {
    /// Nodes that need initialisation (each time such a Node changes).
    pub needs_init: mpsc::UnboundedReceiver<Result<Node, watcher::Error>>,
    /// One item per change of the eligible backend set (coalesced: a
    /// pending item covers later changes).
    pub backends_changed: mpsc::Receiver<()>,
}

impl std::fmt::Debug for NodeFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeFeeds").finish_non_exhaustive()
    }
}

/// Builds the cache over `api`; the returned future runs the watch (spawn
/// it; it ends when the watch stream does, i.e. never on its own).
pub fn node_cache(
    api: Api<Node>,
    provider_name: String,
) -> (NodeCache, NodeFeeds, impl Future<Output = ()> + Send) {
    let (store, writer) = reflector::store::<Node>();
    let routes_changed = Arc::new(Notify::new());
    let (init_tx, needs_init) = mpsc::unbounded();
    let (backends_tx, backends_changed) = mpsc::channel(1);
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let cache = NodeCache {
        store,
        routes_changed: routes_changed.clone(),
        ready,
    };
    let mut hub = Hub {
        ready_tx,
        provider_name,
        routing: PerNode::default(),
        eligible: PerNode::default(),
        routes_changed,
        init_tx,
        backends_tx,
    };
    let task = async move {
        let mut events = watcher(api, watcher::Config::default())
            .modify(slim_node)
            .default_backoff()
            .reflect(writer)
            .boxed();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => hub.on_event(ev),
                Err(e) => tracing::debug!(error = %e, "node watch error (retried)"),
            }
        }
    };
    (
        cache,
        NodeFeeds {
            needs_init,
            backends_changed,
        },
        task,
    )
}

/// Per-Node bookkeeping behind the feeds.
struct Hub {
    /// Set at the end of the first complete listing.
    ready_tx: tokio::sync::watch::Sender<bool>,
    provider_name: String,
    routing: PerNode<(Vec<String>, Option<String>)>,
    eligible: PerNode<String>,
    routes_changed: Arc<Notify>,
    init_tx: mpsc::UnboundedSender<Result<Node, watcher::Error>>,
    backends_tx: mpsc::Sender<()>,
}

impl Hub {
    fn on_event(&mut self, ev: watcher::Event<Node>) {
        if let watcher::Event::Apply(n) | watcher::Event::InitApply(n) = &ev
            && crate::nodes::needs_init(n)
            && n.metadata.deletion_timestamp.is_none()
        {
            // Closed: the node controller is not running here.
            let _ = self.init_tx.unbounded_send(Ok(n.clone()));
        }
        if self.routing.on_event(&ev, routing) {
            self.routes_changed.notify_one();
        }
        let provider = &self.provider_name;
        if self.eligible.on_event(&ev, |n| {
            lb_controller::nodes::eligible_instance(n, provider)
        }) {
            // Full: a trigger is already pending, which covers this change.
            let _ = self.backends_tx.try_send(());
        }
        if matches!(ev, watcher::Event::InitDone) {
            self.ready_tx.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    fn node(name: &str, cidr: &str, ip: &str, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr, "providerID": format!("cloudsuite://z1/i-{name}")},
            "status": {
                "addresses": [{"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": ready}],
                "images": [{"names": ["registry/app:1"], "sizeBytes": 1000}],
            },
        }))
        .unwrap()
    }

    fn hub() -> (Hub, NodeFeeds, Arc<Notify>) {
        let routes_changed = Arc::new(Notify::new());
        let (init_tx, needs_init) = mpsc::unbounded();
        let (backends_tx, backends_changed) = mpsc::channel(1);
        (
            Hub {
                ready_tx: tokio::sync::watch::channel(false).0,
                provider_name: "cloudsuite".into(),
                routing: PerNode::default(),
                eligible: PerNode::default(),
                routes_changed: routes_changed.clone(),
                init_tx,
                backends_tx,
            },
            NodeFeeds {
                needs_init,
                backends_changed,
            },
            routes_changed,
        )
    }

    /// Drains the feeds: (routes woken, backend triggers, nodes to init).
    async fn drain(feeds: &mut NodeFeeds, routes: &Notify) -> (bool, usize, Vec<String>) {
        let woken = tokio::time::timeout(std::time::Duration::from_millis(1), routes.notified())
            .await
            .is_ok();
        let mut triggers = 0;
        while let Ok(()) = feeds.backends_changed.try_recv() {
            triggers += 1;
        }
        let mut init = Vec::new();
        while let Ok(Ok(n)) = feeds.needs_init.try_recv() {
            init.push(n.name_any());
        }
        (woken, triggers, init)
    }

    #[tokio::test]
    async fn fires_only_on_what_each_controller_reads() {
        let (mut hub, mut feeds, routes) = hub();
        hub.on_event(watcher::Event::Init);
        hub.on_event(watcher::Event::InitApply(node(
            "a",
            "10.0.1.0/24",
            "10.1.0.1",
            "True",
        )));
        hub.on_event(watcher::Event::InitApply(node(
            "b",
            "10.0.2.0/24",
            "10.1.0.2",
            "False",
        )));
        hub.on_event(watcher::Event::InitDone);
        // The first listing: routes and backends fire once (both nodes have
        // a providerID, so none needs initialisation).
        assert_eq!(drain(&mut feeds, &routes).await, (true, 1, vec![]));

        // A heartbeat (nothing read changed): nothing fires.
        hub.on_event(watcher::Event::Apply(node(
            "a",
            "10.0.1.0/24",
            "10.1.0.1",
            "True",
        )));
        assert_eq!(drain(&mut feeds, &routes).await, (false, 0, vec![]));
        // b becomes Ready: backends only.
        hub.on_event(watcher::Event::Apply(node(
            "b",
            "10.0.2.0/24",
            "10.1.0.2",
            "True",
        )));
        assert_eq!(drain(&mut feeds, &routes).await, (false, 1, vec![]));
        // a's pod CIDR changes: routes only.
        hub.on_event(watcher::Event::Apply(node(
            "a",
            "10.0.9.0/24",
            "10.1.0.1",
            "True",
        )));
        assert_eq!(drain(&mut feeds, &routes).await, (true, 0, vec![]));
        // A new node that needs initialisation (no providerID).
        let mut c = node("c", "10.0.3.0/24", "10.1.0.3", "True");
        c.spec.as_mut().unwrap().provider_id = None;
        hub.on_event(watcher::Event::Apply(c));
        assert_eq!(
            drain(&mut feeds, &routes).await,
            (true, 0, vec!["c".to_string()])
        );
        // Deleting an eligible node fires both.
        hub.on_event(watcher::Event::Delete(node(
            "b",
            "10.0.2.0/24",
            "10.1.0.2",
            "True",
        )));
        assert_eq!(drain(&mut feeds, &routes).await, (true, 1, vec![]));

        // A re-list with nothing changed fires nothing; one that lost a
        // node while the watch was down fires.
        let relist = |hub: &mut Hub, names: &[&str]| {
            hub.on_event(watcher::Event::Init);
            for n in names {
                let mut x = match *n {
                    "a" => node("a", "10.0.9.0/24", "10.1.0.1", "True"),
                    _ => node("c", "10.0.3.0/24", "10.1.0.3", "True"),
                };
                if *n == "c" {
                    x.spec.as_mut().unwrap().provider_id = None;
                }
                hub.on_event(watcher::Event::InitApply(x));
            }
            hub.on_event(watcher::Event::InitDone);
        };
        relist(&mut hub, &["a", "c"]);
        assert_eq!(
            drain(&mut feeds, &routes).await,
            (false, 0, vec!["c".to_string()])
        );
        relist(&mut hub, &["c"]);
        assert_eq!(
            drain(&mut feeds, &routes).await,
            (true, 1, vec!["c".to_string()])
        );
    }

    #[test]
    fn slim_node_drops_images_and_keeps_what_controllers_read() {
        let mut n = node("a", "10.0.1.0/24", "10.1.0.1", "True");
        slim_node(&mut n);
        let s = n.status.as_ref().unwrap();
        assert!(s.images.is_none());
        assert_eq!(provider::internal_ip(&n), Some("10.1.0.1"));
        assert!(s.conditions.as_ref().is_some_and(|c| c.len() == 1));
    }
}

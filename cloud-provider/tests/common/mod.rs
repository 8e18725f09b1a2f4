//! Shared helpers: an in-process emulator, a scripted Kubernetes API over
//! tower-test's mock transport, and object builders.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cloud_provider::Context;
use cloud_provider::config::CloudConfig;
use cloud_provider::provider::MatchKey;
use http::{Request, Response};
use iaas_client::actions::{DescribeInstances, DescribeRouters};
use iaas_client::model::Instance;
use iaas_emulator::{Emulator, EmulatorConfig};
use k8s_openapi::api::core::v1::Node;
use kube::client::Body;
use serde_json::{Value, json};
use suite_runtime::metrics::ReconcileMetrics;

/// An emulator with its data dir.
pub struct Cloud {
    pub emu: Emulator,
    pub client: iaas_client::Client,
    _dir: tempfile::TempDir,
}

impl Cloud {
    pub async fn start() -> Cloud {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let emu = Emulator::start(EmulatorConfig::for_tests(dir.path()))
            .await
            .unwrap();
        let client = iaas_client::Client::new(
            iaas_client::Config::from_credentials_file(emu.credentials_file()).unwrap(),
        )
        .unwrap();
        Cloud {
            emu,
            client,
            _dir: dir,
        }
    }

    pub async fn instances(&self) -> Vec<Instance> {
        self.client
            .describe_instances_all(&DescribeInstances {
                verbose: true,
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn instance_named(&self, name: &str) -> Instance {
        self.instances()
            .await
            .into_iter()
            .find(|i| i.instance_name == name)
            .unwrap()
    }

    pub async fn router_id(&self) -> String {
        self.client
            .describe_routers_all(&DescribeRouters::default())
            .await
            .unwrap()[0]
            .router_id
            .clone()
    }

    pub fn calls(&self, action: &str) -> u64 {
        self.emu.stats().get(action).map(|s| s.calls).unwrap_or(0)
    }

    pub fn writes(&self) -> u64 {
        self.emu
            .stats()
            .iter()
            .filter(|(a, _)| !a.starts_with("Describe"))
            .map(|(_, s)| s.calls)
            .sum()
    }

    pub async fn config(&self) -> CloudConfig {
        CloudConfig {
            zone: self.emu.zone().to_string(),
            region: "emu".into(),
            router_id: Some(self.router_id().await),
            vxnet_id: None,
            cluster_id: "c1".into(),
            cluster_cidr: Some("10.244.0.0/16".parse().unwrap()),
            provider_name: "cloudsuite".into(),
            node_match_order: MatchKey::DEFAULT_ORDER.to_vec(),
            load_balancer_class: "cloudsuite.io/lb".into(),
            default_eip_bandwidth: 10,
            default_lb_type: 0,
        }
    }

    pub fn context(&self, kube: kube::Client, config: CloudConfig) -> Arc<Context> {
        Arc::new(Context::new(
            kube,
            self.client.clone(),
            config,
            ReconcileMetrics::default(),
            Some("test".into()),
        ))
    }
}

/// Builds the answer (status, body) to a request body.
pub type Reply = Box<dyn Fn(&Value) -> (u16, Value) + Send>;

/// The requests a script saw: method, path, body.
pub type Seen = tokio::task::JoinHandle<Vec<(String, String, Value)>>;

/// One expected request and its canned answer.
pub struct Step {
    pub method: &'static str,
    pub path: String,
    /// Checks the request body (JSON, or Null when empty).
    pub check: Box<dyn Fn(&Value) + Send>,
    /// Status and body to answer, given the request body.
    pub reply: Reply,
}

pub fn step(
    method: &'static str,
    path: impl Into<String>,
    check: impl Fn(&Value) + Send + 'static,
    reply: impl Fn(&Value) -> (u16, Value) + Send + 'static,
) -> Step {
    Step {
        method,
        path: path.into(),
        check: Box::new(check),
        reply: Box::new(reply),
    }
}

/// An Event being recorded (events.k8s.io/v1), whose reason is `reason`.
pub fn event(ns: &str, reason: &'static str, note_contains: &'static str) -> Step {
    step(
        "POST",
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events"),
        move |b| {
            assert_eq!(b["reason"], reason, "event: {b}");
            let note = b["note"].as_str().unwrap_or("");
            assert!(
                note.contains(note_contains),
                "event note {note:?} lacks {note_contains:?}"
            );
        },
        |b| (201, b.clone()),
    )
}

/// A repeated Event: the recorder patches the series of the first one.
pub fn event_again(ns: &str, reason: &'static str) -> Step {
    step(
        "PATCH",
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events/*"),
        move |b| {
            assert_eq!(b["reason"], reason, "event: {b}");
            assert!(b["series"]["count"].as_i64().unwrap_or(0) >= 2, "{b}");
        },
        |b| (200, b.clone()),
    )
}

/// A scripted API server: answers `steps` in order (asserting each request)
/// and fails on any request beyond them. Returns the requests seen.
pub fn script(steps: Vec<Step>) -> (kube::Client, Seen) {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, s) in steps.into_iter().enumerate() {
            let (req, send) = tokio::time::timeout(Duration::from_secs(30), handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("step {i}: no request for {} {}", s.method, s.path))
                .unwrap_or_else(|| panic!("step {i}: client gone before {} {}", s.method, s.path));
            let method = req.method().to_string();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            // A trailing `*` matches any path with that prefix (generated names).
            let path_ok = match s.path.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == s.path,
            };
            assert!(
                method == s.method && path_ok,
                "step {i}: expected {} {}, got {method} {path}: body {body}",
                s.method,
                s.path
            );
            (s.check)(&body);
            let (status, reply) = (s.reply)(&body);
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
            seen.push((method, path, body));
        }
        // Nothing more may be sent.
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(300), handle.next_request()).await
        {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
        seen
    });
    (client, task)
}

/// A Node object as JSON.
pub fn node_json(name: &str, extra: Value) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": name, "uid": format!("uid-{name}"), "resourceVersion": "10" },
        "spec": {}, "status": {},
    });
    merge(&mut v, extra);
    v
}

pub fn node(name: &str, extra: Value) -> Node {
    serde_json::from_value(node_json(name, extra)).unwrap()
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// The Nodes of a [`node_list`], as the shared Node cache hands them out.
pub fn nodes_of(list: &Value) -> Vec<std::sync::Arc<k8s_openapi::api::core::v1::Node>> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| std::sync::Arc::new(serde_json::from_value(n.clone()).unwrap()))
        .collect()
}

pub fn node_list(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": "NodeList", "metadata": { "resourceVersion": "10" }, "items": items })
}

pub fn ready(status: &str) -> Value {
    json!({ "status": { "conditions": [{ "type": "Ready", "status": status }] } })
}

pub const UNINIT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
pub const SHUTDOWN: &str = "node.cloudprovider.kubernetes.io/shutdown";

//! The install artefacts against the code:
//!
//! - every YAML document under `manifests/` parses into the typed
//!   Kubernetes object of its kind, and serializes back to the same fields
//!   (so a misspelt or misplaced field fails here, not in the cluster);
//! - a small kustomize (the subset the manifests use: `resources`,
//!   `namespace`, `patches` with strategic-merge patches of maps) builds the
//!   base and both overlays into the expected object set;
//! - every RBAC rule matches the calls the code makes (`API_CALLS` of each
//!   component), every reference (ServiceAccount, ConfigMap, Secret) resolves,
//!   the container arguments parse with the binaries' own flag parsers, and
//!   the mounted cloud configuration loads with the components' loaders;
//! - the Helm chart, rendered with its default values by a renderer of the
//!   template subset it uses, equals the kustomize base.
//!
//! `kustomize build` / `kubectl kustomize` and `helm template` are the
//! references; these checks run where neither binary is available.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

/// The namespace the base installs into.
const NAMESPACE: &str = "cloudsuite-system";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifests() -> PathBuf {
    repo().join("manifests")
}

/// Every non-empty YAML document of `path`.
fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    parse_documents(&text, &path.display().to_string())
}

fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{origin}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn kind(v: &Value) -> &str {
    str_at(v, &["kind"]).unwrap_or("")
}

fn name(v: &Value) -> &str {
    str_at(v, &["metadata", "name"]).unwrap_or("")
}

fn namespace(v: &Value) -> Option<&str> {
    str_at(v, &["metadata", "namespace"])
}

/// `kind/namespace/name` of an object.
fn key(v: &Value) -> String {
    format!("{}/{}/{}", kind(v), namespace(v).unwrap_or("-"), name(v))
}

// ---------------------------------------------------------------------------
// Typed parsing

/// Kinds without a namespace (kustomize leaves them alone).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CSIDriver",
    "StorageClass",
    "VolumeSnapshotClass",
    "IngressClass",
    "PriorityClass",
];

/// Parses `doc` as `T` and checks that serializing it back gives the same
/// tree: k8s-openapi ignores unknown fields, so this is what catches a typo.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value, origin: &str) -> T {
    let obj: T = serde_yaml::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: {} {}: {e}", kind(doc), name(doc)));
    let back = serde_json::to_value(&obj).unwrap();
    let orig = to_json(doc);
    if let Some(diff) = first_difference(&orig, &back, "") {
        panic!(
            "{origin}: {} {}: field not understood by the API types: {diff}",
            kind(doc),
            name(doc)
        );
    }
    obj
}

fn to_json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

/// The first path where `orig` has something `back` does not (or differs).
/// Numbers compare by value; empty objects/arrays in `orig` may be absent in `back`.
fn first_difference(
    orig: &serde_json::Value,
    back: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value as J;
    match (orig, back) {
        (J::Object(a), J::Object(b)) => {
            for (k, va) in a {
                let path = format!("{at}.{k}");
                match b.get(k) {
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, &path) {
                            return Some(d);
                        }
                    }
                    None if va.is_null() => {}
                    None => return Some(format!("{path} (dropped)")),
                }
            }
            None
        }
        (J::Array(a), J::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{at}[{i}]"))),
        (J::Number(a), J::Number(b)) => {
            (a.as_f64() != b.as_f64()).then(|| format!("{at}: {a} != {b}"))
        }
        (a, b) if a == b => None,
        (a, b) => Some(format!("{at}: {a} != {b}")),
    }
}

/// Parses every document into its typed object; panics naming the file,
/// kind and name of the first that does not parse.
fn check_typed(doc: &Value, origin: &str) {
    match kind(doc) {
        "Deployment" => drop(typed::<Deployment>(doc, origin)),
        "DaemonSet" => drop(typed::<DaemonSet>(doc, origin)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(doc, origin)),
        "ClusterRole" => drop(typed::<ClusterRole>(doc, origin)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(doc, origin)),
        "Role" => drop(typed::<Role>(doc, origin)),
        "RoleBinding" => drop(typed::<RoleBinding>(doc, origin)),
        "ConfigMap" => drop(typed::<ConfigMap>(doc, origin)),
        "Secret" => drop(typed::<Secret>(doc, origin)),
        "Service" => drop(typed::<Service>(doc, origin)),
        "Namespace" => drop(typed::<Namespace>(doc, origin)),
        "StorageClass" => drop(typed::<StorageClass>(doc, origin)),
        "CSIDriver" => drop(typed::<CSIDriver>(doc, origin)),
        "IngressClass" => drop(typed::<IngressClass>(doc, origin)),
        "VolumeSnapshotClass" => {
            // A CRD (external-snapshotter): checked by hand.
            assert_eq!(
                str_at(doc, &["apiVersion"]),
                Some("snapshot.storage.k8s.io/v1"),
                "{origin}"
            );
            assert!(
                !name(doc).is_empty(),
                "{origin}: VolumeSnapshotClass without a name"
            );
            assert!(
                str_at(doc, &["driver"]).is_some_and(|d| !d.is_empty()),
                "{origin}: driver"
            );
            let policy = str_at(doc, &["deletionPolicy"]);
            assert!(
                matches!(policy, Some("Delete") | Some("Retain")),
                "{origin}: deletionPolicy {policy:?}"
            );
            let allowed: BTreeSet<&str> = [
                "apiVersion",
                "kind",
                "metadata",
                "driver",
                "deletionPolicy",
                "parameters",
            ]
            .into();
            for k in doc.as_mapping().unwrap().keys() {
                let k = k.as_str().unwrap_or("");
                assert!(
                    allowed.contains(k),
                    "{origin}: VolumeSnapshotClass field {k:?}"
                );
            }
        }
        "Kustomization" => {}
        other => panic!("{origin}: kind {other:?} has no typed check; add one"),
    }
}

/// Every YAML file under manifests/ (recursively), sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(yaml_files(&p));
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn every_manifest_parses_into_its_typed_object() {
    let files = yaml_files(&manifests());
    assert!(files.len() > 10, "{files:?}");
    for f in files {
        for doc in documents(&f) {
            assert!(
                str_at(&doc, &["apiVersion"]).is_some(),
                "{}: a document without apiVersion",
                f.display()
            );
            check_typed(&doc, &f.display().to_string());
        }
    }
}

// ---------------------------------------------------------------------------
// A kustomize subset

/// Builds the kustomization in `dir`: `resources` (files or directories,
/// recursively), then `patches` (strategic-merge patches found by kind and
/// name; maps merge, lists and scalars replace), then `namespace`.
/// Any other key is an error, so using a feature this does not implement
/// fails loudly instead of being silently ignored.
fn kustomize(dir: &Path) -> Result<Vec<Value>, String> {
    let kfile = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&kfile).map_err(|e| format!("{}: {e}", kfile.display()))?;
    let k: Value = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", kfile.display()))?;
    let map = k
        .as_mapping()
        .ok_or_else(|| format!("{}: not a mapping", kfile.display()))?;
    for key in map.keys() {
        let key = key.as_str().unwrap_or("");
        if !["apiVersion", "kind", "namespace", "resources", "patches"].contains(&key) {
            return Err(format!(
                "{}: {key:?} is not in the supported subset",
                kfile.display()
            ));
        }
    }
    let mut objects = Vec::new();
    for r in k
        .get("resources")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let r = r
            .as_str()
            .ok_or_else(|| format!("{}: resources: not a string", kfile.display()))?;
        let path = dir.join(r);
        if path.is_dir() {
            objects.extend(kustomize(&path)?);
        } else if path.is_file() {
            objects.extend(documents(&path));
        } else {
            return Err(format!("{}: resource {r} does not exist", kfile.display()));
        }
    }
    for p in k
        .get("patches")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        let file = p.get("path").and_then(Value::as_str).ok_or_else(|| {
            format!(
                "{}: patches: only `path:` patches are supported",
                kfile.display()
            )
        })?;
        for patch in documents(&dir.join(file)) {
            let target = objects
                .iter_mut()
                .find(|o| kind(o) == kind(&patch) && name(o) == name(&patch))
                .ok_or_else(|| {
                    format!(
                        "{}: patch {file}: no {} {}",
                        kfile.display(),
                        kind(&patch),
                        name(&patch)
                    )
                })?;
            merge(target, &patch);
        }
    }
    if let Some(ns) = k.get("namespace").and_then(Value::as_str) {
        for o in &mut objects {
            set_namespace(o, ns);
        }
    }
    let mut seen = BTreeSet::new();
    for o in &objects {
        if !seen.insert(key(o)) {
            return Err(format!("{}: {} defined twice", dir.display(), key(o)));
        }
    }
    Ok(objects)
}

/// Strategic merge of maps; everything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Mapping(t), Value::Mapping(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// kustomize's namespace transformer: namespaced objects get `ns`; a
/// Namespace object is renamed; ServiceAccount subjects of bindings whose
/// namespace is unset or `default` follow.
fn set_namespace(o: &mut Value, ns: &str) {
    let k = kind(o).to_string();
    let meta = o
        .as_mapping_mut()
        .unwrap()
        .entry("metadata".into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if k == "Namespace" {
        meta["name"] = ns.into();
    } else if !CLUSTER_SCOPED.contains(&k.as_str()) {
        meta.as_mapping_mut()
            .unwrap()
            .insert("namespace".into(), ns.into());
    }
    if (k == "RoleBinding" || k == "ClusterRoleBinding")
        && let Some(Value::Sequence(subjects)) = o.get_mut("subjects")
    {
        {
            for s in subjects {
                if s.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                    && matches!(
                        s.get("namespace").and_then(Value::as_str),
                        None | Some("default")
                    )
                {
                    s.as_mapping_mut()
                        .unwrap()
                        .insert("namespace".into(), ns.into());
                }
            }
        }
    }
}

fn build(rel: &str) -> Vec<Value> {
    kustomize(&manifests().join(rel)).unwrap_or_else(|e| panic!("{e}"))
}

fn find<'a>(objects: &'a [Value], k: &str, n: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == k && name(o) == n)
        .unwrap_or_else(|| panic!("no {k} {n}"))
}

fn of_kind<T: DeserializeOwned>(objects: &[Value], k: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|o| kind(o) == k)
        .map(|o| {
            serde_yaml::from_value(o.clone()).unwrap_or_else(|e| panic!("{k} {}: {e}", name(o)))
        })
        .collect()
}

#[test]
fn kustomize_subset_merges_and_namespaces() {
    let mut target: Value = serde_yaml::from_str(
        "kind: ConfigMap\nmetadata: {name: a}\ndata: {x: '1', y: '2'}\nlist: [1, 2]\n",
    )
    .unwrap();
    let patch: Value = serde_yaml::from_str(
        "kind: ConfigMap\nmetadata: {name: a}\ndata: {y: '3', z: '4'}\nlist: [9]\n",
    )
    .unwrap();
    merge(&mut target, &patch);
    assert_eq!(str_at(&target, &["data", "x"]), Some("1"));
    assert_eq!(str_at(&target, &["data", "y"]), Some("3"));
    assert_eq!(str_at(&target, &["data", "z"]), Some("4"));
    assert_eq!(target["list"].as_sequence().unwrap().len(), 1);

    let mut crb: Value = serde_yaml::from_str(
        "kind: ClusterRoleBinding\nmetadata: {name: b}\nsubjects:\n- {kind: ServiceAccount, name: s}\n\
         - {kind: ServiceAccount, name: t, namespace: other}\n- {kind: User, name: u}\n",
    )
    .unwrap();
    set_namespace(&mut crb, "ns1");
    assert_eq!(namespace(&crb), None, "cluster-scoped");
    assert_eq!(crb["subjects"][0]["namespace"].as_str(), Some("ns1"));
    assert_eq!(crb["subjects"][1]["namespace"].as_str(), Some("other"));
    assert!(crb["subjects"][2].get("namespace").is_none());
}

/// The object set of the base: every component, one namespace.
fn expected_base_keys() -> BTreeSet<String> {
    let ns = |k: &str, n: &str| format!("{k}/{NAMESPACE}/{n}");
    let cluster = |k: &str, n: &str| format!("{k}/-/{n}");
    [
        cluster("Namespace", NAMESPACE),
        ns("ConfigMap", "cloudsuite-cloud-config"),
        ns("Secret", "cloudsuite-credentials"),
        // CCM
        ns("ServiceAccount", "cloud-controller-manager"),
        cluster("ClusterRole", "cloudsuite:cloud-controller-manager"),
        cluster("ClusterRoleBinding", "cloudsuite:cloud-controller-manager"),
        ns("Role", "cloud-controller-manager-leader-election"),
        ns("RoleBinding", "cloud-controller-manager-leader-election"),
        ns("Deployment", "cloud-controller-manager"),
        // CSI
        cluster("CSIDriver", "disk.csi.cloudsuite.io"),
        ns("ServiceAccount", "csi-disk-controller"),
        ns("ServiceAccount", "csi-disk-node"),
        cluster("ClusterRole", "csi-disk-controller"),
        cluster("ClusterRoleBinding", "csi-disk-controller"),
        ns("Role", "csi-disk-controller-leases"),
        ns("RoleBinding", "csi-disk-controller-leases"),
        cluster("ClusterRole", "csi-disk-node"),
        cluster("ClusterRoleBinding", "csi-disk-node"),
        ns("Deployment", "csi-disk-controller"),
        ns("DaemonSet", "csi-disk-node"),
        cluster("StorageClass", "csi-disk"),
        cluster("VolumeSnapshotClass", "csi-disk-snapclass"),
        // CNI
        ns("ServiceAccount", "cloudsuite-cni"),
        cluster("ClusterRole", "cloudsuite-cni"),
        cluster("ClusterRoleBinding", "cloudsuite-cni"),
        ns("DaemonSet", "cloudsuite-cni"),
        // Ingress controller
        ns("ServiceAccount", "cloudsuite-ingress-controller"),
        cluster("ClusterRole", "cloudsuite-ingress-controller"),
        cluster("ClusterRoleBinding", "cloudsuite-ingress-controller"),
        ns("Role", "cloudsuite-ingress-controller-leader"),
        ns("RoleBinding", "cloudsuite-ingress-controller-leader"),
        cluster("IngressClass", "cloudsuite"),
        ns("Deployment", "cloudsuite-ingress-controller"),
    ]
    .into_iter()
    .collect()
}

#[test]
fn base_builds_the_expected_objects_in_one_namespace() {
    let objects = build("base");
    for o in &objects {
        check_typed(o, "base");
    }
    let keys: BTreeSet<String> = objects.iter().map(key).collect();
    assert_eq!(keys, expected_base_keys());
    for o in &objects {
        if !CLUSTER_SCOPED.contains(&kind(o)) {
            assert_eq!(namespace(o), Some(NAMESPACE), "{}", key(o));
        }
    }
    check_references(&objects, "base");
}

#[test]
fn overlays_build_and_point_at_their_endpoints() {
    let base: BTreeSet<String> = build("base").iter().map(key).collect();

    let cloud = build("overlays/cloud");
    let keys: BTreeSet<String> = cloud.iter().map(key).collect();
    assert_eq!(keys, base, "the cloud overlay only patches");
    check_references(&cloud, "overlays/cloud");
    let (endpoint, _) = cloud_config_consistent(&cloud, "overlays/cloud");
    assert!(endpoint.starts_with("https://"), "{endpoint}");

    let emu = build("overlays/emulator");
    let keys: BTreeSet<String> = emu.iter().map(key).collect();
    let extra: BTreeSet<String> = keys.difference(&base).cloned().collect();
    let want: BTreeSet<String> = ["Deployment", "Service", "Secret"]
        .iter()
        .map(|k| {
            let n = if *k == "Secret" {
                "iaas-emulator-config"
            } else {
                "iaas-emulator"
            };
            format!("{k}/{NAMESPACE}/{n}")
        })
        .collect();
    assert_eq!(extra, want);
    assert!(base.is_subset(&keys));
    check_references(&emu, "overlays/emulator");
    for o in &emu {
        check_typed(o, "overlays/emulator");
    }
    let (endpoint, zone) = cloud_config_consistent(&emu, "overlays/emulator");
    // The endpoint names the emulator's Service, in our namespace, on its port.
    let svc: Service =
        serde_yaml::from_value(find(&emu, "Service", "iaas-emulator").clone()).unwrap();
    let port = svc.spec.unwrap().ports.unwrap()[0].port;
    assert_eq!(endpoint, format!("http://iaas-emulator.{NAMESPACE}:{port}"));

    // The emulator serves the API only, on that port, with the preset keys.
    let d: Deployment =
        serde_yaml::from_value(find(&emu, "Deployment", "iaas-emulator").clone()).unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "serve");
    assert!(
        args.contains(&"--control-plane-only".to_string()),
        "{args:?}"
    );
    assert!(
        args.contains(&format!("--listen=0.0.0.0:{port}")),
        "{args:?}"
    );
    let cfg_secret: Secret =
        serde_yaml::from_value(find(&emu, "Secret", "iaas-emulator-config").clone()).unwrap();
    let emu_cfg: Value =
        serde_yaml::from_str(&cfg_secret.string_data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(emu_cfg["zone"].as_str(), Some(zone.as_str()));
    assert_eq!(
        emu_cfg["listen"].as_str(),
        Some(format!("0.0.0.0:{port}").as_str())
    );
    let creds: Secret =
        serde_yaml::from_value(find(&emu, "Secret", "cloudsuite-credentials").clone()).unwrap();
    let creds = creds.string_data.unwrap();
    assert_eq!(
        emu_cfg["credentials"]["access_key_id"].as_str(),
        Some(creds["access_key_id"].as_str())
    );
    assert_eq!(
        emu_cfg["credentials"]["secret_access_key"].as_str(),
        Some(creds["secret_access_key"].as_str())
    );
    // The host-network CCM resolves the in-cluster name through cluster DNS.
    let ccm: Deployment =
        serde_yaml::from_value(find(&emu, "Deployment", "cloud-controller-manager").clone())
            .unwrap();
    let spec = ccm.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(spec.host_network, Some(true));
}

/// Pod specs of the workloads, with the workload's key.
fn pod_specs(objects: &[Value]) -> Vec<(String, PodSpec)> {
    let mut out = Vec::new();
    for o in objects {
        let spec = match kind(o) {
            "Deployment" => {
                serde_yaml::from_value::<Deployment>(o.clone())
                    .unwrap()
                    .spec
                    .unwrap()
                    .template
                    .spec
            }
            "DaemonSet" => {
                serde_yaml::from_value::<DaemonSet>(o.clone())
                    .unwrap()
                    .spec
                    .unwrap()
                    .template
                    .spec
            }
            _ => continue,
        };
        out.push((key(o), spec.unwrap()));
    }
    out
}

/// Every ServiceAccount, ConfigMap and Secret a workload or binding names
/// exists in the build, in the workload's namespace.
fn check_references(objects: &[Value], origin: &str) {
    let have: BTreeSet<String> = objects.iter().map(key).collect();
    let need = |k: &str, ns: &str, n: &str, from: &str| {
        let want = format!("{k}/{ns}/{n}");
        assert!(have.contains(&want), "{origin}: {from} needs {want}");
    };
    for (wkey, spec) in pod_specs(objects) {
        let ns = wkey.split('/').nth(1).unwrap().to_string();
        if let Some(sa) = &spec.service_account_name {
            need("ServiceAccount", &ns, sa, &wkey);
        }
        for v in spec.volumes.iter().flatten() {
            if let Some(cm) = &v.config_map {
                need("ConfigMap", &ns, &cm.name, &wkey);
            }
            if let Some(s) = &v.secret {
                need("Secret", &ns, s.secret_name.as_deref().unwrap_or(""), &wkey);
            }
            for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(cm) = &src.config_map {
                    need("ConfigMap", &ns, &cm.name, &wkey);
                    let obj: ConfigMap =
                        serde_yaml::from_value(find(objects, "ConfigMap", &cm.name).clone())
                            .unwrap();
                    let data = obj.data.unwrap_or_default();
                    for item in cm.items.iter().flatten() {
                        assert!(
                            data.contains_key(&item.key),
                            "{origin}: {wkey}: ConfigMap key {}",
                            item.key
                        );
                    }
                }
                if let Some(s) = &src.secret {
                    need("Secret", &ns, &s.name, &wkey);
                    let obj: Secret =
                        serde_yaml::from_value(find(objects, "Secret", &s.name).clone()).unwrap();
                    let data = obj.string_data.unwrap_or_default();
                    for item in s.items.iter().flatten() {
                        assert!(
                            data.contains_key(&item.key),
                            "{origin}: {wkey}: Secret key {}",
                            item.key
                        );
                    }
                }
            }
        }
        for c in &spec.containers {
            for e in c.env.iter().flatten() {
                if let Some(r) = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.config_map_key_ref.as_ref())
                {
                    need("ConfigMap", &ns, &r.name, &wkey);
                    let obj: ConfigMap =
                        serde_yaml::from_value(find(objects, "ConfigMap", &r.name).clone())
                            .unwrap();
                    assert!(
                        obj.data.unwrap_or_default().contains_key(&r.key),
                        "{origin}: {wkey}: {}",
                        r.key
                    );
                }
            }
        }
    }
    for k in ["RoleBinding", "ClusterRoleBinding"] {
        for b in objects.iter().filter(|o| kind(o) == k) {
            let role_kind = str_at(b, &["roleRef", "kind"]).unwrap();
            let role_name = str_at(b, &["roleRef", "name"]).unwrap();
            let role_ns = if role_kind == "Role" {
                namespace(b).unwrap()
            } else {
                "-"
            };
            need(role_kind, role_ns, role_name, &key(b));
            for s in b["subjects"].as_sequence().unwrap() {
                if s["kind"].as_str() == Some("ServiceAccount") {
                    let sns = s["namespace"]
                        .as_str()
                        .expect("ServiceAccount subject without namespace");
                    need("ServiceAccount", sns, s["name"].as_str().unwrap(), &key(b));
                }
            }
        }
    }
}

/// Writes what the shared projected volume holds (ConfigMap keys and the
/// credentials under `credentials/`) into `dir`.
fn materialize_cloud_config(objects: &[Value], dir: &Path) -> BTreeMap<String, String> {
    let cm: ConfigMap =
        serde_yaml::from_value(find(objects, "ConfigMap", "cloudsuite-cloud-config").clone())
            .unwrap();
    let data = cm.data.unwrap();
    for (k, v) in &data {
        std::fs::write(dir.join(k), v).unwrap();
    }
    let secret: Secret =
        serde_yaml::from_value(find(objects, "Secret", "cloudsuite-credentials").clone()).unwrap();
    std::fs::create_dir_all(dir.join("credentials")).unwrap();
    for (k, v) in secret.string_data.unwrap() {
        std::fs::write(dir.join("credentials").join(k), v).unwrap();
    }
    data
}

/// Loads the shared configuration with the components' own loaders and
/// checks that endpoint and zone agree everywhere; returns them.
fn cloud_config_consistent(objects: &[Value], origin: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = materialize_cloud_config(objects, dir.path());
    let (ccm, ccm_iaas) =
        cloud_provider::config::load(&dir.path().join("cloud-config.yaml"), |_| None)
            .unwrap_or_else(|e| panic!("{origin}: cloud-config.yaml: {e}"));
    let iaas = iaas_client::Config::from_yaml_file(dir.path().join("iaas.yaml"))
        .unwrap_or_else(|e| panic!("{origin}: iaas.yaml: {e}"));
    assert_eq!(ccm.zone, iaas.zone, "{origin}: zone");
    assert_eq!(data["zone"].trim(), iaas.zone, "{origin}: zone key");
    // The Ingress controller takes its cluster id from this key, the CCM
    // from cloud-config.yaml: LBs of one cluster carry one id.
    assert_eq!(
        data.get("cluster_id").map(|s| s.trim()),
        Some(ccm.cluster_id.as_str()),
        "{origin}: cluster_id key"
    );
    assert_eq!(ccm_iaas.endpoint, iaas.endpoint, "{origin}: endpoint");
    assert_eq!(
        ccm_iaas.credentials, iaas.credentials,
        "{origin}: credentials"
    );
    (iaas.endpoint, iaas.zone)
}

#[test]
fn shared_cloud_config_loads_with_the_components_loaders() {
    let base = build("base");
    let (endpoint, zone) = cloud_config_consistent(&base, "base");
    assert_eq!(endpoint, iaas_client::config::DEFAULT_ENDPOINT);
    assert!(!zone.is_empty());
}

// ---------------------------------------------------------------------------
// RBAC against the code

type Call = (String, String, String);

fn calls(list: &[(&str, &str, &str)]) -> BTreeSet<Call> {
    list.iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

fn rule_calls(rules: &[PolicyRule], origin: &str) -> BTreeSet<Call> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.non_resource_urls.is_none(),
            "{origin}: non-resource URLs"
        );
        for g in rule.api_groups.iter().flatten() {
            assert_ne!(g, "*", "{origin}: wildcard group");
            for r in rule.resources.iter().flatten() {
                assert_ne!(r, "*", "{origin}: wildcard resource");
                for v in &rule.verbs {
                    assert_ne!(v, "*", "{origin}: wildcard verb");
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// What the ServiceAccount `ns/sa` is granted: (cluster-wide, in `ns`), and
/// the resourceNames restrictions of the namespaced rules per resource.
fn grants(
    objects: &[Value],
    ns: &str,
    sa: &str,
) -> (BTreeSet<Call>, BTreeSet<Call>, Vec<PolicyRule>) {
    let binds = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(ns)
        })
    };
    let mut cluster = BTreeSet::new();
    for b in of_kind::<ClusterRoleBinding>(objects, "ClusterRoleBinding") {
        if binds(&b.subjects) {
            assert_eq!(b.role_ref.kind, "ClusterRole");
            let role: ClusterRole =
                serde_yaml::from_value(find(objects, "ClusterRole", &b.role_ref.name).clone())
                    .unwrap();
            cluster.extend(rule_calls(
                role.rules.as_deref().unwrap_or_default(),
                &b.role_ref.name,
            ));
        }
    }
    let mut local = BTreeSet::new();
    let mut local_rules = Vec::new();
    for b in of_kind::<RoleBinding>(objects, "RoleBinding") {
        if b.metadata.namespace.as_deref() == Some(ns) && binds(&b.subjects) {
            assert_eq!(b.role_ref.kind, "Role", "a namespaced grant uses a Role");
            let role: Role =
                serde_yaml::from_value(find(objects, "Role", &b.role_ref.name).clone()).unwrap();
            let rules = role.rules.unwrap_or_default();
            local.extend(rule_calls(&rules, &b.role_ref.name));
            local_rules.extend(rules);
        }
    }
    (cluster, local, local_rules)
}

/// The flag value `--name=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")))
}

#[test]
fn ccm_rbac_grants_exactly_the_calls_the_code_makes() {
    let objects = build("base");
    let (cluster, local, local_rules) = grants(&objects, NAMESPACE, "cloud-controller-manager");
    let all = calls(cloud_provider::rbac::API_CALLS);
    let leases = calls(cloud_provider::rbac::LEADER_ELECTION_CALLS);
    assert!(leases.is_subset(&all));
    assert_eq!(
        cluster,
        all.difference(&leases).cloned().collect::<BTreeSet<_>>()
    );
    assert_eq!(local, leases);

    // get/patch of the Lease are restricted to the Lease the Deployment names.
    let d: Deployment =
        serde_yaml::from_value(find(&objects, "Deployment", "cloud-controller-manager").clone())
            .unwrap();
    let spec = d.spec.unwrap();
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    let lease = flag(&args, "leader-elect-lease-name").unwrap_or("cloud-controller-manager");
    for rule in &local_rules {
        if rule.verbs.iter().any(|v| v == "create") {
            assert!(
                rule.resource_names.is_none(),
                "create cannot be limited by name"
            );
        } else {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&[lease.to_string()][..])
            );
        }
    }
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("cloud-controller-manager")
    );
}

#[test]
fn cni_rbac_grants_exactly_the_calls_the_agent_makes() {
    let objects = build("base");
    let (cluster, local, _) = grants(&objects, NAMESPACE, "cloudsuite-cni");
    assert_eq!(cluster, calls(cni_plugin::agent::API_CALLS));
    assert!(local.is_empty());
}

#[test]
fn ingress_rbac_grants_exactly_the_calls_the_controller_makes() {
    // The base (kubectl apply -k) and the chart with every knob set: the
    // knobs must not change what the controller may do.
    let mut knobs = default_values();
    knobs["ingress"]["className"] = "internal-lb".into();
    knobs["ingress"]["defaultClass"] = Value::Bool(false);
    for (origin, objects) in [
        ("base", build("base")),
        ("chart", render_chart(default_values()).0),
        ("chart (knobs set)", render_chart(knobs).0),
    ] {
        let (wkey, spec) = pod_specs(&objects)
            .into_iter()
            .find(|(_, s)| {
                s.containers.iter().any(|c| {
                    c.image
                        .as_deref()
                        .unwrap_or("")
                        .contains("/ingress-controller:")
                })
            })
            .unwrap_or_else(|| panic!("{origin}: no ingress-controller workload"));
        let sa = spec.service_account_name.clone().expect("a ServiceAccount");
        let ns = wkey.split('/').nth(1).unwrap();
        assert_eq!(ns, NAMESPACE, "{origin}");
        let (cluster, local, _) = grants(&objects, ns, &sa);
        let all = calls(lb_controller::ingress::rbac::API_CALLS);
        let leases = calls(lb_controller::ingress::rbac::LEADER_ELECTION_CALLS);
        assert!(leases.is_subset(&all));
        // Everything but the Lease cluster-wide (Ingresses and their
        // backends live in every namespace); the Lease only in ours.
        assert_eq!(
            cluster,
            all.difference(&leases).cloned().collect::<BTreeSet<_>>(),
            "{origin}: cluster-wide grants"
        );
        assert_eq!(local, leases, "{origin}: namespaced grants");
    }
}

// ---------------------------------------------------------------------------
// Workloads against the binaries' flags

fn containers_with_image(
    objects: &[Value],
    image_part: &str,
) -> Vec<(String, k8s_openapi::api::core::v1::Container)> {
    pod_specs(objects)
        .into_iter()
        .flat_map(|(k, s)| s.containers.into_iter().map(move |c| (k.clone(), c)))
        .filter(|(_, c)| c.image.as_deref().unwrap_or("").contains(image_part))
        .collect()
}

#[test]
fn container_arguments_parse_with_the_binaries_flag_parsers() {
    use clap::Parser;
    let objects = build("base");

    let ccm = containers_with_image(&objects, "cloudsuite/cloud-controller-manager");
    assert_eq!(ccm.len(), 1);
    let args = ccm[0].1.args.clone().unwrap();
    let flags = cloud_provider::config::Flags::try_parse_from(
        std::iter::once("cloud-controller-manager".to_string()).chain(args.iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("CCM args {args:?}: {e}"));
    flags.validate().unwrap();
    assert!(flags.leader_elect, "two replicas need leader election");
    assert_eq!(
        flags.cloud_config,
        Path::new("/etc/cloudsuite/cloud-config.yaml")
    );
    let mount = ccm[0].1.volume_mounts.as_ref().unwrap();
    assert!(mount.iter().any(|m| m.mount_path == "/etc/cloudsuite"));
    let d: Deployment =
        serde_yaml::from_value(find(&objects, "Deployment", "cloud-controller-manager").clone())
            .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    let env = ccm[0].1.env.clone().unwrap();
    let field = |n: &str| {
        env.iter().find(|e| e.name == n).and_then(|e| {
            e.value_from
                .as_ref()?
                .field_ref
                .as_ref()
                .map(|f| f.field_path.clone())
        })
    };
    assert_eq!(
        field("POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(field("POD_NAME").as_deref(), Some("metadata.name"));
    let port = flags.metrics_addr.port();
    for probe in [&ccm[0].1.liveness_probe, &ccm[0].1.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into())
        );
    }

    let csi = containers_with_image(&objects, "cloudsuite/csi-driver");
    assert_eq!(csi.len(), 2, "controller and node");
    for (wkey, c) in &csi {
        let args = c.args.clone().unwrap();
        let parsed = csi_driver::cli::Args::try_parse_from(
            std::iter::once("csi-driver".to_string()).chain(args.iter().cloned()),
        )
        .unwrap_or_else(|e| panic!("{wkey}: csi-driver args {args:?}: {e}"));
        if let Some(cfg) = &parsed.iaas_config {
            let dir = cfg.parent().unwrap().to_str().unwrap();
            assert!(
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_path == dir),
                "{wkey}: --iaas-config {} is not mounted",
                cfg.display()
            );
        }
    }
}

/// The long flags of the `ingress-controller` binary, read from its clap
/// `Args` struct (the binary has no library API to parse with).
fn ingress_controller_flags() -> BTreeMap<String, FlagSpec> {
    let src = std::fs::read_to_string(repo().join("lb-controller/src/bin/ingress-controller.rs"))
        .unwrap();
    let body = &src[src.find("struct Args {").expect("struct Args")..];
    let body = &body[..body.find("\n}").unwrap()];
    let mut out = BTreeMap::new();
    let mut pending: Option<(Option<String>, bool)> = None;
    for line in body.lines().map(str::trim) {
        if let Some(attr) = line.strip_prefix("#[arg(") {
            assert!(attr.contains("long"), "a positional argument: {line}");
            let env = attr
                .split("env = \"")
                .nth(1)
                .map(|r| r[..r.find('"').unwrap()].to_string());
            pending = Some((env, attr.contains("default_value")));
        } else if let (Some((env, has_default)), Some((field, ty))) =
            (pending.take(), line.split_once(':'))
        {
            let ty = ty.trim().trim_end_matches(',').to_string();
            let required = !has_default && !ty.starts_with("Option<");
            out.insert(
                field.trim().replace('_', "-"),
                FlagSpec { ty, env, required },
            );
        }
    }
    assert!(
        out.contains_key("cluster-id") && out.contains_key("metrics-addr"),
        "{out:?}"
    );
    out
}

/// One flag of a clap `Args` struct.
#[derive(Debug)]
struct FlagSpec {
    /// The field's Rust type as written.
    ty: String,
    /// `env = "..."`, if the flag can come from the environment.
    env: Option<String>,
    /// No default and not optional.
    required: bool,
}

#[test]
fn ingress_controller_arguments_match_its_flags() {
    let flags = ingress_controller_flags();
    let mut knobs = default_values();
    knobs["cloud"]["providerName"] = "qc".into();
    knobs["cloud"]["vxnetId"] = "vxnet-1234".into();
    knobs["cloud"]["defaultEipBandwidth"] = 20.into();
    knobs["ingress"]["extraArgs"] = serde_yaml::from_str("[--resync-secs=60]").unwrap();
    knobs["ingress"]["metricsPort"] = 10999.into();
    for (origin, objects) in [
        ("base", build("base")),
        ("overlays/emulator", build("overlays/emulator")),
        ("chart (knobs set)", render_chart(knobs.clone()).0),
    ] {
        let found = containers_with_image(&objects, "/ingress-controller:");
        assert_eq!(found.len(), 1, "{origin}");
        let (wkey, c) = &found[0];
        assert!(
            c.command.is_none(),
            "{origin}: the image entrypoint runs the binary"
        );
        let args = c.args.clone().unwrap_or_default();
        let env = c.env.clone().unwrap_or_default();
        let mut seen = BTreeSet::new();
        for a in &args {
            let (name, value) = a
                .strip_prefix("--")
                .and_then(|a| a.split_once('='))
                .unwrap_or_else(|| panic!("{origin}: {wkey}: {a:?} is not --flag=value"));
            let ty = &flags
                .get(name)
                .unwrap_or_else(|| panic!("{origin}: {wkey}: unknown flag --{name}"))
                .ty;
            seen.insert(name.to_string());
            let ok = match ty.as_str() {
                "bool" => value.parse::<bool>().is_ok(),
                "u32" => value.parse::<u32>().is_ok(),
                "u64" => value.parse::<u64>().is_ok(),
                "SocketAddr" => value.parse::<std::net::SocketAddr>().is_ok(),
                "logging::LogFormat" => matches!(value, "text" | "json"),
                _ => !value.is_empty(),
            };
            assert!(ok, "{origin}: {wkey}: --{name}={value} is not a {ty}");
        }
        // Required flags without a default come from the environment.
        let from_env = |var: &str| env.iter().any(|e| e.name == var);
        for (name, spec) in flags.iter().filter(|(_, s)| s.required) {
            assert!(
                seen.contains(name) || spec.env.as_deref().is_some_and(from_env),
                "{origin}: {wkey}: --{name} is required"
            );
        }
        // Metrics port: the flag, the container port and the probes agree.
        let addr: std::net::SocketAddr = flag(&args, "metrics-addr").unwrap().parse().unwrap();
        let port = c.ports.as_ref().unwrap()[0].container_port;
        assert_eq!(i32::from(addr.port()), port, "{origin}");
        for probe in [&c.liveness_probe, &c.readiness_probe] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(
                get.port,
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port),
                "{origin}"
            );
        }
        assert!(
            flag(&args, "leader-elect") == Some("true"),
            "{origin}: two replicas"
        );
        // The credentials file is the mounted iaas.yaml, and it loads.
        let creds = flag(&args, "credentials-file").expect("--credentials-file");
        let (dir, file) = creds.rsplit_once('/').unwrap();
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == dir),
            "{origin}: {dir} is not mounted"
        );
        let tmp = tempfile::tempdir().unwrap();
        materialize_cloud_config(&objects, tmp.path());
        let (_, pod) = pod_specs(&objects)
            .into_iter()
            .find(|(k, _)| k == wkey)
            .unwrap();
        let item = pod
            .volumes
            .iter()
            .flatten()
            .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
            .filter_map(|s| s.config_map.as_ref())
            .flat_map(|cm| cm.items.iter().flatten())
            .find(|i| i.path == file)
            .unwrap_or_else(|| panic!("{origin}: nothing projects {file}"));
        let iaas = iaas_client::Config::from_credentials_file(tmp.path().join(&item.key))
            .unwrap_or_else(|e| panic!("{origin}: --credentials-file: {e}"));
        let (endpoint, zone) = cloud_config_consistent(&objects, origin);
        assert_eq!((iaas.endpoint, iaas.zone), (endpoint, zone), "{origin}");
        // Its cluster id is the cloud config's key cluster_id.
        let r = env
            .iter()
            .find(|e| Some(e.name.as_str()) == flags["cluster-id"].env.as_deref())
            .and_then(|e| e.value_from.as_ref()?.config_map_key_ref.clone())
            .unwrap_or_else(|| panic!("{origin}: cluster id not from the ConfigMap"));
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("cloudsuite-cloud-config", "cluster_id")
        );
        if origin.starts_with("chart") {
            for want in [
                "--provider-name=qc",
                "--vxnet-id=vxnet-1234",
                "--default-eip-bandwidth=20",
                "--resync-secs=60",
                "--metrics-addr=0.0.0.0:10999",
            ] {
                assert!(
                    args.iter().any(|a| a == want),
                    "{origin}: {want} in {args:?}"
                );
            }
        }
    }
}

#[test]
fn ingress_class_knobs() {
    let class = |objects: &[Value]| -> IngressClass {
        let found: Vec<IngressClass> = of_kind(objects, "IngressClass");
        assert_eq!(found.len(), 1);
        found.into_iter().next().unwrap()
    };
    let default_annotation = |c: &IngressClass| {
        c.metadata.annotations.as_ref().and_then(|a| {
            a.get(lb_controller::ingress::annotations::DEFAULT_CLASS)
                .cloned()
        })
    };
    for objects in [build("base"), render_chart(default_values()).0] {
        let c = class(&objects);
        assert_eq!(c.metadata.name.as_deref(), Some("cloudsuite"));
        assert_eq!(default_annotation(&c).as_deref(), Some("true"));
        assert_eq!(
            c.spec.unwrap().controller.as_deref(),
            Some(lb_controller::ingress::CONTROLLER_NAME)
        );
    }
    let mut values = default_values();
    values["ingress"]["className"] = "internal-lb".into();
    values["ingress"]["defaultClass"] = Value::Bool(false);
    let objects = render_chart(values).0;
    for o in &objects {
        check_typed(o, "chart (ingress class knobs)");
    }
    let c = class(&objects);
    assert_eq!(c.metadata.name.as_deref(), Some("internal-lb"));
    assert_eq!(default_annotation(&c), None);
}

// ---------------------------------------------------------------------------
// The Helm chart

mod helm {
    //! A renderer for the Go-template subset the chart uses:
    //! `{{ .Values.a.b }}`, `{{ .Release.Namespace }}`, `{{ .Release.Name }}`,
    //! `{{ .Chart.AppVersion }}`, `{{- if X }}..{{- else }}..{{- end }}`
    //! (also `if not X`), and the functions `toYaml`, `nindent N`, `indent N`,
    //! `quote`, both as calls and in pipelines; `{{-`/`-}}` trim whitespace;
    //! `{{/* comments */}}`. A path that does not resolve is an error (helm
    //! would print nothing), so a template typo fails the test.

    use serde_yaml::Value;

    #[derive(Debug)]
    enum Node {
        Text(String),
        Expr(String),
        If(String, Vec<Node>, Vec<Node>),
    }

    /// The data the templates see.
    pub struct Scope {
        /// `.Values`.
        pub values: Value,
        /// `.Release.Namespace`.
        pub namespace: String,
        /// `.Release.Name`.
        pub release: String,
        /// `.Chart.AppVersion`.
        pub app_version: String,
        /// Every `.Values` path read (for the unused-value check).
        pub used: std::cell::RefCell<std::collections::BTreeSet<String>>,
    }

    /// Splits `src` into text and actions, applying the trim markers.
    fn lex(src: &str) -> Result<Vec<(bool, String)>, String> {
        let mut out: Vec<(bool, String)> = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(start) = rest.find("{{") {
            let mut text = rest[..start].to_string();
            if trim_next {
                text = text.trim_start().to_string();
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or("unclosed {{")?;
            let mut action = &after[..end];
            if let Some(a) = action.strip_prefix('-') {
                text = text.trim_end().to_string();
                action = a;
            }
            trim_next = false;
            if let Some(a) = action.strip_suffix('-') {
                trim_next = true;
                action = a;
            }
            out.push((false, text));
            out.push((true, action.trim().to_string()));
            rest = &after[end + 2..];
        }
        let mut text = rest.to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        out.push((false, text));
        Ok(out)
    }

    fn parse(
        tokens: &mut std::iter::Peekable<std::vec::IntoIter<(bool, String)>>,
        top: bool,
    ) -> Result<(Vec<Node>, Option<String>), String> {
        let mut nodes = Vec::new();
        while let Some((is_action, s)) = tokens.next() {
            if !is_action {
                nodes.push(Node::Text(s));
                continue;
            }
            if s.starts_with("/*") {
                continue;
            }
            if let Some(cond) = s.strip_prefix("if ") {
                let (then, stop) = parse(tokens, false)?;
                let otherwise = if stop.as_deref() == Some("else") {
                    let (e, stop) = parse(tokens, false)?;
                    if stop.as_deref() != Some("end") {
                        return Err("if/else without end".into());
                    }
                    e
                } else if stop.as_deref() == Some("end") {
                    Vec::new()
                } else {
                    return Err("if without end".into());
                };
                nodes.push(Node::If(cond.trim().to_string(), then, otherwise));
            } else if s == "else" || s == "end" {
                if top {
                    return Err(format!("unexpected {s}"));
                }
                return Ok((nodes, Some(s)));
            } else {
                nodes.push(Node::Expr(s));
            }
        }
        if !top {
            return Err("missing end".into());
        }
        Ok((nodes, None))
    }

    impl Scope {
        fn lookup(&self, path: &str) -> Result<Value, String> {
            if path == ".Release.Namespace" {
                return Ok(Value::String(self.namespace.clone()));
            }
            if path == ".Release.Name" {
                return Ok(Value::String(self.release.clone()));
            }
            if path == ".Chart.AppVersion" {
                return Ok(Value::String(self.app_version.clone()));
            }
            let rest = path
                .strip_prefix(".Values")
                .ok_or_else(|| format!("unsupported term {path:?}"))?;
            let mut cur = &self.values;
            for part in rest.split('.').filter(|p| !p.is_empty()) {
                cur = cur
                    .get(part)
                    .ok_or_else(|| format!("{path}: no such value"))?;
            }
            self.used
                .borrow_mut()
                .insert(rest.trim_start_matches('.').to_string());
            Ok(cur.clone())
        }

        fn term(&self, t: &str) -> Result<Value, String> {
            if t.starts_with('.') {
                self.lookup(t)
            } else if let Some(s) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
                Ok(Value::String(s.to_string()))
            } else if let Ok(n) = t.parse::<i64>() {
                Ok(Value::Number(n.into()))
            } else {
                Err(format!("unsupported term {t:?}"))
            }
        }

        /// Evaluates one pipeline.
        fn eval(&self, expr: &str) -> Result<Value, String> {
            let mut acc: Option<Value> = None;
            for stage in expr.split('|') {
                let words: Vec<&str> = stage.split_whitespace().collect();
                let (f, args) = words.split_first().ok_or("empty pipeline stage")?;
                let mut vals = args
                    .iter()
                    .map(|a| self.term(a))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(a) = acc.take() {
                    vals.push(a);
                }
                acc = Some(match *f {
                    "toYaml" => Value::String(to_yaml(one(&vals, f)?)),
                    "quote" => Value::String(format!("{:?}", scalar(one(&vals, f)?)?)),
                    "nindent" | "indent" => {
                        let [n, v] = &vals[..] else {
                            return Err(format!("{f}: two arguments"));
                        };
                        let n = n.as_u64().ok_or("indent width")? as usize;
                        let pad = " ".repeat(n);
                        let body = scalar(v)?
                            .lines()
                            .map(|l| {
                                if l.is_empty() {
                                    String::new()
                                } else {
                                    format!("{pad}{l}")
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("\n");
                        Value::String(if *f == "nindent" {
                            format!("\n{body}")
                        } else {
                            body
                        })
                    }
                    "not" => Value::Bool(!truthy(one(&vals, f)?)),
                    t if vals.is_empty() => self.term(t)?,
                    other => return Err(format!("unsupported function {other:?}")),
                });
            }
            acc.ok_or_else(|| "empty action".into())
        }

        fn render_nodes(&self, nodes: &[Node], out: &mut String) -> Result<(), String> {
            for n in nodes {
                match n {
                    Node::Text(t) => out.push_str(t),
                    Node::Expr(e) => out.push_str(&scalar(&self.eval(e)?)?),
                    Node::If(c, then, otherwise) => {
                        let branch = if truthy(&self.eval(c)?) {
                            then
                        } else {
                            otherwise
                        };
                        self.render_nodes(branch, out)?;
                    }
                }
            }
            Ok(())
        }

        /// Renders one template file's text.
        pub fn render(&self, src: &str) -> Result<String, String> {
            let mut tokens = lex(src)?.into_iter().peekable();
            let (nodes, _) = parse(&mut tokens, true)?;
            let mut out = String::new();
            self.render_nodes(&nodes, &mut out)?;
            Ok(out)
        }
    }

    fn one<'a>(vals: &'a [Value], f: &str) -> Result<&'a Value, String> {
        match vals {
            [v] => Ok(v),
            _ => Err(format!("{f}: one argument")),
        }
    }

    fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Sequence(s) => !s.is_empty(),
            Value::Mapping(m) => !m.is_empty(),
            Value::Tagged(_) => true,
        }
    }

    fn scalar(v: &Value) -> Result<String, String> {
        Ok(match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            other => return Err(format!("a map or list printed without toYaml: {other:?}")),
        })
    }

    fn to_yaml(v: &Value) -> String {
        match v {
            Value::Mapping(m) if m.is_empty() => "{}".into(),
            Value::Sequence(s) if s.is_empty() => "[]".into(),
            _ => serde_yaml::to_string(v).unwrap().trim_end().to_string(),
        }
    }
}

fn chart_dir() -> PathBuf {
    repo().join("charts/cloudsuite")
}

/// Renders every template of the chart with `values`; returns the objects
/// and the `.Values` paths the templates read.
fn render_chart(values: Value) -> (Vec<Value>, BTreeSet<String>) {
    let chart: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .unwrap();
    let scope = helm::Scope {
        values,
        namespace: NAMESPACE.into(),
        release: "cloudsuite".into(),
        app_version: chart["appVersion"].as_str().unwrap().into(),
        used: Default::default(),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        let out = scope
            .render(&src)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        objects.extend(parse_documents(&out, &f.display().to_string()));
    }
    // The paths written in the templates (also those in branches the
    // default values do not take).
    let mut used = scope.used.borrow().clone();
    for f in std::fs::read_dir(chart_dir().join("templates")).unwrap() {
        let src = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for (i, _) in src.match_indices(".Values.") {
            let path: String = src[i + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            used.insert(path.trim_end_matches('.').to_string());
        }
    }
    (objects, used)
}

fn default_values() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
        .unwrap()
}

#[test]
fn chart_default_render_equals_the_kustomize_base() {
    let (rendered, _) = render_chart(default_values());
    assert_equals_base(&rendered, "chart");
}

/// With `CLOUDSUITE_HELM_RENDER=<file>` holding the output of a real
/// `helm template cloudsuite charts/cloudsuite -n cloudsuite-system`, checks
/// that Helm's own render equals the base too (the renderer above is a
/// subset; this is the reference). Without the variable it does nothing.
#[test]
fn real_helm_render_equals_the_kustomize_base() {
    let Ok(file) = std::env::var("CLOUDSUITE_HELM_RENDER") else {
        eprintln!("SKIP: CLOUDSUITE_HELM_RENDER (a `helm template` output) is not set");
        return;
    };
    let rendered = documents(Path::new(&file));
    assert_equals_base(&rendered, &file);
}

/// `rendered` (the chart's objects) equals the kustomize base without its
/// Namespace object, field by field.
fn assert_equals_base(rendered: &[Value], origin: &str) {
    for o in rendered {
        check_typed(o, origin);
    }
    // helm installs into an existing (or --create-namespace) namespace: the
    // chart has no Namespace object; everything else is the same.
    let base: BTreeMap<String, serde_json::Value> = build("base")
        .iter()
        .filter(|o| kind(o) != "Namespace")
        .map(|o| (key(o), normalized(o)))
        .collect();
    let chart: BTreeMap<String, serde_json::Value> =
        rendered.iter().map(|o| (key(o), normalized(o))).collect();
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        base.keys().collect::<Vec<_>>(),
        "{origin}: object sets differ"
    );
    for (k, want) in &base {
        let got = &chart[k];
        if let Some(d) = first_difference(want, got, "").or_else(|| first_difference(got, want, ""))
        {
            panic!("{origin}: {k}: chart and base differ at {d}");
        }
    }
}

/// `o` as JSON, with embedded YAML files of ConfigMaps (`*.yaml` keys)
/// parsed, so comments and layout inside them do not count.
fn normalized(o: &Value) -> serde_json::Value {
    let mut j = to_json(o);
    if kind(o) == "ConfigMap"
        && let Some(serde_json::Value::Object(data)) = j.get_mut("data")
    {
        {
            for (k, v) in data.iter_mut() {
                if let (true, Some(text)) = (k.ends_with(".yaml"), v.as_str()) {
                    let parsed: Value =
                        serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{k}: {e}"));
                    *v = to_json(&parsed);
                }
            }
        }
    }
    j
}

/// Every leaf path of `v` (maps only; lists and scalars are leaves).
fn leaves(v: &Value, at: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                leaves(
                    v,
                    &if at.is_empty() {
                        k.to_string()
                    } else {
                        format!("{at}.{k}")
                    },
                    out,
                );
            }
        }
        _ => {
            out.insert(at.to_string());
        }
    }
}

#[test]
fn chart_values_are_all_used_and_components_can_be_disabled() {
    let (_, used) = render_chart(default_values());
    let mut all = BTreeSet::new();
    leaves(&default_values(), "", &mut all);
    let unused: Vec<&String> = all
        .iter()
        .filter(|leaf| {
            !used
                .iter()
                .any(|u| *leaf == u || leaf.starts_with(&format!("{u}.")))
        })
        .collect();
    assert!(unused.is_empty(), "values no template reads: {unused:?}");

    // Each enable flag removes exactly its component's objects.
    let full: BTreeSet<String> = render_chart(default_values()).0.iter().map(key).collect();
    for (component, marker) in [
        ("ccm", "cloud-controller-manager"),
        ("csi", "csi-disk"),
        ("cni", "cloudsuite-cni"),
        ("ingress", "ingress-controller"),
    ] {
        let mut values = default_values();
        values[component]["enabled"] = Value::Bool(false);
        let keys: BTreeSet<String> = render_chart(values).0.iter().map(key).collect();
        let gone: BTreeSet<&String> = full.difference(&keys).collect();
        assert!(!gone.is_empty(), "{component}");
        assert!(
            gone.iter().all(|k| k.contains(marker)
                || k.contains("disk.csi")
                || (component == "ingress" && k.starts_with("IngressClass/"))),
            "{component}: {gone:?}"
        );
        assert!(keys.contains(&format!("ConfigMap/{NAMESPACE}/cloudsuite-cloud-config")));
    }
}

#[test]
fn chart_renderer_subset() {
    let scope = helm::Scope {
        values: serde_yaml::from_str("a: {b: x, on: true, off: false, m: {k: v}, n: 3}").unwrap(),
        namespace: "ns".into(),
        release: "r".into(),
        app_version: "1".into(),
        used: Default::default(),
    };
    let out = scope
        .render(
            "x: {{ .Values.a.b }}\n{{- if .Values.a.on }}\ny: {{ .Release.Namespace | quote }}\n{{- end }}\n\
             {{- if .Values.a.off }}\nno: 1\n{{- else }}\nz: {{ .Values.a.n }}\n{{- end }}\nm:{{ toYaml .Values.a.m | nindent 2 }}\n\
             {{- if not .Values.a.off }}\nw: 1\n{{- end }}\n",
        )
        .unwrap();
    assert_eq!(out, "x: x\ny: \"ns\"\nz: 3\nm:\n  k: v\nw: 1\n");
    assert!(
        scope
            .render("{{ .Values.a.missing }}")
            .unwrap_err()
            .contains("a.missing")
    );
    assert!(scope.render("{{ if .Values.a.on }}").is_err());
}

#[test]
fn typed_check_rejects_unknown_fields() {
    let bad: Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndatta: {x: y}\n",
    )
    .unwrap();
    assert!(std::panic::catch_unwind(|| check_typed(&bad, "t")).is_err());
    let good: Value = serde_yaml::from_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {x: y}\n",
    )
    .unwrap();
    check_typed(&good, "t");
}

#[test]
fn chart_renders_with_every_optional_knob_set() {
    let mut values = default_values();
    let set: Value = serde_yaml::from_str(
        "region: pek3\nvxnetId: vxnet-1234\nproviderName: qc\nnodeMatchOrder: [node-name, internal-ip]\n\
         loadBalancerClass: example.com/lb\ndefaultEipBandwidth: 20\ndefaultLbType: 1\n\
         iaasClient: {signature_method: HmacSHA256, rate_limit: {qps: 5, burst: 10}}\n",
    )
    .unwrap();
    merge(&mut values["cloud"], &set);
    values["ccm"]["nodeSelector"] =
        serde_yaml::from_str("{node-role.kubernetes.io/control-plane: ''}").unwrap();
    values["cni"]["ipMasq"]["enabled"] = Value::Bool(true);
    values["cni"]["bigTCP"] = Value::Bool(false);
    let (objects, _) = render_chart(values);
    for o in &objects {
        check_typed(o, "chart (knobs set)");
    }
    check_references(&objects, "chart (knobs set)");
    let dir = tempfile::tempdir().unwrap();
    materialize_cloud_config(&objects, dir.path());
    let (ccm, _) =
        cloud_provider::config::load(&dir.path().join("cloud-config.yaml"), |_| None).unwrap();
    assert_eq!(ccm.region, "pek3");
    assert_eq!(ccm.provider_name, "qc");
    assert_eq!(ccm.default_eip_bandwidth, 20);
    assert_eq!(ccm.default_lb_type, 1);
    assert_eq!(ccm.node_match_order.len(), 2);
    let iaas = iaas_client::Config::from_yaml_file(dir.path().join("iaas.yaml")).unwrap();
    assert_eq!(iaas.rate_limit.qps, 5);
    let ds: DaemonSet =
        serde_yaml::from_value(find(&objects, "DaemonSet", "cloudsuite-cni").clone()).unwrap();
    let env = ds.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "CNI_IP_MASQ" && e.value.as_deref() == Some("true"))
    );
    assert!(
        env.iter()
            .any(|e| e.name == "CNI_BIG_TCP" && e.value.as_deref() == Some("false"))
    );
}

#[test]
fn every_suite_image_has_a_dockerfile_target_and_the_workspace_version() {
    let dockerfile = std::fs::read_to_string(repo().join("images/Dockerfile")).unwrap();
    let build_script = std::fs::read_to_string(repo().join("images/build-static.sh")).unwrap();
    assert!(dockerfile.contains("COPY images/build-static.sh"));
    let targets: BTreeSet<String> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .filter_map(|l| l.split(" AS ").nth(1).map(|t| t.trim().to_string()))
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    let mut images = BTreeSet::new();
    let mut objects = build("overlays/emulator");
    objects.extend(render_chart(default_values()).0);
    for (_, spec) in pod_specs(&objects) {
        for c in spec.containers {
            let image = c.image.unwrap();
            if let Some(rest) = image.strip_prefix("cloudsuite/") {
                let (name, tag) = rest.split_once(':').expect("a tagged image");
                assert!(
                    targets.contains(name),
                    "{image}: no `AS {name}` in images/Dockerfile"
                );
                assert_eq!(tag, version, "{image}");
                // Every binary is built with --locked, statically.
                assert!(build_script.contains("--locked"));
                assert!(build_script.contains("unknown-linux-musl"));
                images.insert(name.to_string());
            }
        }
    }
    for want in [
        "cloud-controller-manager",
        "csi-driver",
        "cni-plugin",
        "ingress-controller",
        "iaas-emulator",
    ] {
        assert!(images.contains(want), "{want} not used by any manifest");
    }
}

// ---------------------------------------------------------------------------
// Images against the manifests

/// One runtime target of images/Dockerfile.
#[derive(Debug, Default)]
struct ImageTarget {
    /// Absolute paths the target copies out of build stages.
    installed: BTreeSet<String>,
    /// The exec-form ENTRYPOINT's program.
    entrypoint: Option<String>,
    /// The build stages it copies from.
    from_stages: BTreeSet<String>,
}

/// Per build stage of images/Dockerfile: the package and binaries its
/// `build-static` line builds.
type BuildStages = BTreeMap<String, (String, Vec<String>)>;

/// Parses images/Dockerfile: runtime targets and build stages.
fn dockerfile_targets() -> (BTreeMap<String, ImageTarget>, BuildStages) {
    let text = std::fs::read_to_string(repo().join("images/Dockerfile")).unwrap();
    // Join continuation lines so one instruction is one line.
    let joined = text.replace("\\\n", " ");
    let mut targets: BTreeMap<String, ImageTarget> = BTreeMap::new();
    let mut builds = BTreeMap::new();
    let mut stage = String::new();
    for line in joined.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            stage = from
                .split(" AS ")
                .nth(1)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("COPY --from=") {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (dest, sources) = words[1..].split_last().unwrap();
            let t = targets.entry(stage.clone()).or_default();
            t.from_stages.insert(words[0].to_string());
            for src in sources {
                let file = src.rsplit('/').next().unwrap();
                let path = if dest.ends_with('/') {
                    format!("{dest}{file}")
                } else {
                    assert_eq!(sources.len(), 1, "{line}");
                    dest.to_string()
                };
                t.installed.insert(path);
            }
        } else if let Some(ep) = line.strip_prefix("ENTRYPOINT ") {
            let argv: Vec<String> = serde_json::from_str(ep)
                .unwrap_or_else(|e| panic!("ENTRYPOINT of {stage} is not exec form: {e}"));
            targets.entry(stage.clone()).or_default().entrypoint = argv.first().cloned();
        } else if let Some(i) = line.find("build-static ") {
            let words: Vec<String> = line[i + "build-static ".len()..]
                .split_whitespace()
                .map(String::from)
                .collect();
            let (pkg, bins) = words
                .split_first()
                .expect("build-static <package> <bin>...");
            builds.insert(stage.clone(), (pkg.clone(), bins.to_vec()));
        }
    }
    (targets, builds)
}

/// The binary names package `pkg` (a workspace directory) defines.
fn package_binaries(pkg: &str) -> BTreeSet<String> {
    let dir = repo().join(pkg);
    let manifest: toml_like::Manifest = toml_like::parse(
        &std::fs::read_to_string(dir.join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("{pkg}/Cargo.toml: {e}")),
    );
    let mut bins: BTreeSet<String> = manifest.bins.into_iter().collect();
    if dir.join("src/main.rs").is_file() {
        bins.insert(manifest.package_name);
    }
    bins
}

/// Just enough of Cargo.toml: `[package] name` and `[[bin]] name`s.
mod toml_like {
    /// The two facts read.
    pub struct Manifest {
        pub package_name: String,
        pub bins: Vec<String>,
    }

    pub fn parse(text: &str) -> Manifest {
        let mut section = "";
        let mut package_name = String::new();
        let mut bins = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
            } else if let Some(v) = line.strip_prefix("name = ") {
                let v = v.trim_matches('"').to_string();
                match section {
                    "[package]" => package_name = v,
                    "[[bin]]" => bins.push(v),
                    _ => {}
                }
            }
        }
        Manifest { package_name, bins }
    }
}

#[test]
fn every_container_runs_a_binary_its_image_installs() {
    let (targets, builds) = dockerfile_targets();
    // Each build stage builds real binaries of a real package, and each
    // runtime target copies only what its build stages produce.
    for (stage, (pkg, bins)) in &builds {
        let have = package_binaries(pkg);
        for b in bins {
            assert!(have.contains(b), "{stage}: package {pkg} has no binary {b}");
        }
    }
    for (name, t) in &targets {
        for from in &t.from_stages {
            let (_, bins) = builds
                .get(from)
                .unwrap_or_else(|| panic!("{name}: COPY --from={from}: no build-static stage"));
            for path in &t.installed {
                let file = path.rsplit('/').next().unwrap();
                assert!(
                    bins.iter().any(|b| b == file),
                    "{name}: installs {path}, which {from} does not build"
                );
            }
        }
        if let Some(ep) = &t.entrypoint {
            assert!(
                t.installed.contains(ep),
                "{name}: ENTRYPOINT {ep} is not installed"
            );
        }
    }

    let mut objects = build("overlays/emulator");
    objects.extend(render_chart(default_values()).0);
    let mut checked = BTreeSet::new();
    for (wkey, spec) in pod_specs(&objects) {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let image = c.image.as_deref().unwrap_or("");
            let Some(rest) = image.strip_prefix("cloudsuite/") else {
                continue;
            };
            let target_name = rest.split(':').next().unwrap();
            let t = targets
                .get(target_name)
                .unwrap_or_else(|| panic!("{wkey}: no target {target_name}"));
            let program = match c.command.as_deref() {
                Some([first, ..]) => first.clone(),
                Some([]) => panic!("{wkey}: empty command"),
                None => t
                    .entrypoint
                    .clone()
                    .unwrap_or_else(|| panic!("{target_name}: no ENTRYPOINT and no command")),
            };
            assert!(
                t.installed.contains(&program),
                "{wkey}/{}: runs {program}, which {target_name} does not install ({:?})",
                c.name,
                t.installed
            );
            // An argument vector that starts with a path would be a command
            // placed in args by mistake (the entrypoint would get it).
            if let Some(first) = c.args.as_ref().and_then(|a| a.first()) {
                assert!(
                    !first.starts_with('/'),
                    "{wkey}/{}: args[0] {first} looks like a program",
                    c.name
                );
            }
            checked.insert(target_name.to_string());
        }
    }
    for want in [
        "cloud-controller-manager",
        "csi-driver",
        "cni-plugin",
        "ingress-controller",
        "iaas-emulator",
    ] {
        assert!(checked.contains(want), "no manifest runs {want}");
    }
    // The agent installs the plugin found next to its own executable.
    let cni = &targets["cni-plugin"];
    for bin in ["cloudsuite-cni-agent", cni_plugin::agent::PLUGIN_TYPE] {
        assert!(
            cni.installed.contains(&format!("/usr/local/bin/{bin}")),
            "cni-plugin image lacks {bin}"
        );
    }
}

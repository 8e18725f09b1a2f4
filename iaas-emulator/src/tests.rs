//! Crate tests over a real bound port with a tiny raw HTTP/1.1 client and
//! hand-signed requests (not the iaas-client transport).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iaas_client::sign::{SignatureMethod, signed_query};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Credentials;
use crate::dataplane::{DataPlane, DpResult, LbDriver, LbSpec};
use crate::faults::{ErrorFault, FaultConfig, JobFault, StuckFault, Throttle};
use crate::util::format_time_stamp;
use crate::{Emulator, EmulatorConfig};

const KEY: &str = "EMUTESTKEY";
const SECRET: &str = "test-secret";

fn config(dir: &std::path::Path) -> EmulatorConfig {
    EmulatorConfig {
        job_delay_ms: 5,
        credentials: Some(Credentials {
            access_key_id: KEY.into(),
            secret_access_key: SECRET.into(),
        }),
        ..EmulatorConfig::for_tests(dir)
    }
}

async fn start() -> (Emulator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(config(dir.path())).await.unwrap();
    (emu, dir)
}

/// Sends raw bytes, returns (status, body).
async fn raw(emu: &Emulator, request: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn common(action: &str, offset_secs: i64) -> Vec<(String, String)> {
    let ts =
        format_time_stamp(time::OffsetDateTime::now_utc() + time::Duration::seconds(offset_secs));
    [
        ("action", action),
        ("zone", "emu1"),
        ("time_stamp", &ts),
        ("access_key_id", KEY),
        ("version", "1"),
        ("signature_method", "HmacSHA256"),
        ("signature_version", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn pairs(action: &str, params: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut p = common(action, 0);
    p.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    p
}

async fn get_signed(emu: &Emulator, query: &str) -> (u16, Value) {
    let (status, body) = raw(
        emu,
        format!("GET /iaas/?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

async fn call(emu: &Emulator, action: &str, params: &[(&str, &str)]) -> Value {
    let q = signed_query(
        SECRET,
        SignatureMethod::HmacSha256,
        "GET",
        "/iaas/",
        &pairs(action, params),
    );
    let (status, v) = get_signed(emu, &q).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn ok(emu: &Emulator, action: &str, params: &[(&str, &str)]) -> Value {
    let v = call(emu, action, params).await;
    assert_eq!(v["ret_code"], 0, "{action}: {v}");
    assert_eq!(v["action"], format!("{action}Response"));
    v
}

async fn err(
    emu: &Emulator,
    action: &str,
    params: &[(&str, &str)],
    code: i32,
    needle: &str,
) -> String {
    let v = call(emu, action, params).await;
    assert_eq!(v["ret_code"], code, "{action}: {v}");
    let msg = v["message"].as_str().unwrap().to_string();
    assert!(msg.contains(needle), "{action}: {msg:?} lacks {needle:?}");
    msg
}

async fn wait_job(emu: &Emulator, job: &Value) -> Value {
    let id = job["job_id"].as_str().unwrap().to_string();
    for _ in 0..500 {
        let v = ok(emu, "DescribeJobs", &[("jobs.1", &id)]).await;
        let j = v["job_set"][0].clone();
        if j["status"] == "successful" || j["status"] == "failed" {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not finish");
}

async fn wait_ok(emu: &Emulator, job: &Value) {
    let j = wait_job(emu, job).await;
    assert_eq!(j["status"], "successful", "{j}");
}

async fn node(emu: &Emulator, n: usize) -> String {
    let v = ok(emu, "DescribeInstances", &[]).await;
    v["instance_set"][n]["instance_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap().to_string()
}

#[tokio::test]
async fn authentication_and_envelope() {
    let (emu, _d) = start().await;
    let v = ok(&emu, "DescribeInstances", &[]).await;
    assert_eq!(v["total_count"], 3);
    assert_eq!(v["instance_set"][0]["instance_name"], "node-1");
    assert_eq!(
        v["instance_set"][0]["vxnets"][0]["private_ip"],
        "172.30.1.11"
    );

    // POST with a form body, signed for POST.
    let body = signed_query(
        SECRET,
        SignatureMethod::HmacSha256,
        "POST",
        "/iaas/",
        &pairs("DescribeVxnets", &[]),
    );
    let (status, text) = raw(
        &emu,
        format!(
            "POST /iaas/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ret_code"], 0, "{v}");
    assert_eq!(v["vxnet_set"][0]["router"]["manager_ip"], "172.30.1.1");

    // The same body signed as GET does not verify.
    let q = signed_query(
        SECRET,
        SignatureMethod::HmacSha256,
        "POST",
        "/iaas/",
        &pairs("DescribeVxnets", &[]),
    );
    let (_, v) = get_signed(&emu, &q).await;
    assert_eq!(v["ret_code"], 1200);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("signature mismatch")
    );

    // HmacSHA1.
    let mut p = pairs("DescribeJobs", &[]);
    p.iter_mut()
        .find(|(k, _)| k == "signature_method")
        .unwrap()
        .1 = "HmacSHA1".into();
    let q = signed_query(SECRET, SignatureMethod::HmacSha1, "GET", "/iaas/", &p);
    assert_eq!(get_signed(&emu, &q).await.1["ret_code"], 0);

    // Wrong secret, unknown key.
    let q = signed_query(
        "nope",
        SignatureMethod::HmacSha256,
        "GET",
        "/iaas/",
        &pairs("DescribeJobs", &[]),
    );
    assert_eq!(get_signed(&emu, &q).await.1["ret_code"], 1200);
    let mut p = pairs("DescribeJobs", &[]);
    p.iter_mut().find(|(k, _)| k == "access_key_id").unwrap().1 = "OTHER".into();
    let q = signed_query(SECRET, SignatureMethod::HmacSha256, "GET", "/iaas/", &p);
    let (_, v) = get_signed(&emu, &q).await;
    assert_eq!(v["ret_code"], 1200);
    assert!(v["message"].as_str().unwrap().contains("OTHER"));

    // Tampering with a signed parameter.
    let q = signed_query(
        SECRET,
        SignatureMethod::HmacSha256,
        "GET",
        "/iaas/",
        &pairs("DescribeVolumes", &[("limit", "5")]),
    );
    let (_, v) = get_signed(&emu, &q.replace("limit=5", "limit=6")).await;
    assert_eq!(v["ret_code"], 1200);

    // Expired and future time stamps.
    for offset in [-120, 120] {
        let mut p = common("DescribeJobs", offset);
        p.push(("limit".into(), "1".into()));
        let q = signed_query(SECRET, SignatureMethod::HmacSha256, "GET", "/iaas/", &p);
        let (_, v) = get_signed(&emu, &q).await;
        assert_eq!(v["ret_code"], 1300, "{v}");
    }

    // Wrong zone, unknown action, bad version.
    let mut p = pairs("DescribeJobs", &[]);
    p.iter_mut().find(|(k, _)| k == "zone").unwrap().1 = "pek3".into();
    let q = signed_query(SECRET, SignatureMethod::HmacSha256, "GET", "/iaas/", &p);
    let (_, v) = get_signed(&emu, &q).await;
    assert_eq!(v["ret_code"], 1100);
    assert!(v["message"].as_str().unwrap().contains("zone"), "{v}");
    err(&emu, "LaunchRockets", &[], 1100, "LaunchRockets").await;
    let mut p = pairs("DescribeJobs", &[]);
    p.retain(|(k, _)| k != "signature_method");
    let q = signed_query(SECRET, SignatureMethod::HmacSha256, "GET", "/iaas/", &p);
    let (_, v) = get_signed(&emu, &q).await;
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("[signature_method]"),
        "{v}"
    );

    // Size limits.
    let big = "x".repeat(crate::server::MAX_BODY + 10);
    let (status, text) = raw(
        &emu,
        format!("POST /iaas/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{big}", big.len()),
    )
    .await;
    assert_eq!(status, 413);
    assert!(text.contains("request too large"));
    let (status, _) = get_signed(
        &emu,
        &format!("a={}", "y".repeat(crate::server::MAX_QUERY + 1)),
    )
    .await;
    assert_eq!(status, 413);

    let stats = emu.stats();
    assert!(stats["DescribeJobs"].errors >= 4, "{stats:?}");
    assert!(stats["DescribeInstances"].by_ret_code[&0] >= 1);
    emu.shutdown().await;
}

#[tokio::test]
async fn credentials_file_and_admin_off() {
    let (emu, dir) = start().await;
    let path = emu.credentials_file();
    assert_eq!(path, dir.path().join("credentials.yaml"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let y: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(y["qy_access_key_id"].as_str(), Some(KEY));
    assert_eq!(y["qy_secret_access_key"].as_str(), Some(SECRET));
    assert_eq!(y["zone"].as_str(), Some("emu1"));
    assert_eq!(y["endpoint"].as_str().unwrap(), emu.endpoint());
    let (status, _) = raw(
        &emu,
        "GET /admin/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 404);
    emu.shutdown().await;

    // Generated credentials at first start of another dir.
    let dir2 = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig::for_tests(dir2.path()))
        .await
        .unwrap();
    assert!(emu.first_start());
    assert!(emu.access_key_id().starts_with("EMU"));
    assert_eq!(emu.secret_access_key().len(), 40);
    emu.shutdown().await;
}

#[tokio::test]
async fn volume_lifecycle() {
    let (emu, _d) = start().await;
    let inst = node(&emu, 0).await;
    let v = ok(
        &emu,
        "CreateVolumes",
        &[("size", "20"), ("volume_name", "pvc-1"), ("count", "2")],
    )
    .await;
    let vols: Vec<String> = v["volumes"].as_array().unwrap().iter().map(s).collect();
    assert_eq!(vols.len(), 2);
    assert!(vols[0].starts_with("vol-") && vols[0].len() == 12);
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vols[0])]).await;
    assert_eq!(d["volume_set"][0]["transition_status"], "creating");
    wait_ok(&emu, &v).await;
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vols[0])]).await;
    assert_eq!(d["volume_set"][0]["status"], "available");
    assert_eq!(d["volume_set"][0]["transition_status"], "");

    // Validation names the field.
    err(&emu, "CreateVolumes", &[("size", "15")], 1100, "[size]").await;
    err(
        &emu,
        "CreateVolumes",
        &[("size", "20"), ("volume_type", "7")],
        1100,
        "[volume_type]",
    )
    .await;
    err(&emu, "CreateVolumes", &[], 1100, "[size]").await;
    err(
        &emu,
        "AttachVolumes",
        &[("volumes.1", "vol-nothere"), ("instance", &inst)],
        2100,
        "vol-nothere",
    )
    .await;

    let a = ok(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vols[0]), ("instance", &inst)],
    )
    .await;
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vols[0])]).await;
    assert_eq!(d["volume_set"][0]["transition_status"], "attaching");
    err(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vols[0]), ("instance", &inst)],
        1400,
        &vols[0],
    )
    .await;
    wait_ok(&emu, &a).await;
    let d = ok(&emu, "DescribeVolumes", &[("instance_id", &inst)]).await;
    assert_eq!(d["total_count"], 1);
    assert_eq!(d["volume_set"][0]["status"], "in-use");
    assert_eq!(
        d["volume_set"][0]["instance"]["device"],
        format!("/dev/disk/by-id/virtio-{}", vols[0])
    );

    let msg = err(
        &emu,
        "DeleteVolumes",
        &[("volumes.1", &vols[0])],
        1400,
        "in-use",
    )
    .await;
    assert!(msg.contains(&vols[0]));
    err(
        &emu,
        "ResizeVolumes",
        &[("volumes.1", &vols[0]), ("size", "10")],
        1100,
        "[size]",
    )
    .await;
    let other = node(&emu, 1).await;
    err(
        &emu,
        "DetachVolumes",
        &[("volumes.1", &vols[0]), ("instance", &other)],
        1400,
        "not attached",
    )
    .await;

    // Online resize, snapshot, clone, restore.
    let r = ok(
        &emu,
        "ResizeVolumes",
        &[("volumes.1", &vols[0]), ("size", "40")],
    )
    .await;
    wait_ok(&emu, &r).await;
    let ss = ok(
        &emu,
        "CreateSnapshots",
        &[("resources.1", &vols[0]), ("snapshot_name", "s1")],
    )
    .await;
    wait_ok(&emu, &ss).await;
    let snap = s(&ss["snapshots"][0]);
    let d = ok(&emu, "DescribeSnapshots", &[("resource_id", &vols[0])]).await;
    assert_eq!(d["snapshot_set"][0]["size"], 40);
    assert_eq!(d["snapshot_set"][0]["status"], "available");
    let c = ok(
        &emu,
        "CreateVolumeFromSnapshot",
        &[("snapshot", &snap), ("volume_name", "restored")],
    )
    .await;
    wait_ok(&emu, &c).await;
    let cl = ok(
        &emu,
        "CloneVolumes",
        &[("volume", &vols[0]), ("volume_name", "clone")],
    )
    .await;
    wait_ok(&emu, &cl).await;
    let d = ok(&emu, "DescribeVolumes", &[("search_word", "restored")]).await;
    assert_eq!(d["volume_set"][0]["size"], 40);

    let det = ok(
        &emu,
        "DetachVolumes",
        &[("volumes.1", &vols[0]), ("instance", &inst)],
    )
    .await;
    wait_ok(&emu, &det).await;
    let del = ok(&emu, "DeleteVolumes", &[("volumes.1", &vols[0])]).await;
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vols[0])]).await;
    assert_eq!(d["volume_set"][0]["transition_status"], "deleting");
    wait_ok(&emu, &del).await;
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vols[0])]).await;
    assert_eq!(d["total_count"], 0);
    let dsn = ok(&emu, "DeleteSnapshots", &[("snapshots.1", &snap)]).await;
    wait_ok(&emu, &dsn).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn attach_limit_and_terminate_detaches() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig {
        attach_limit: 2,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let inst = node(&emu, 0).await;
    let v = ok(&emu, "CreateVolumes", &[("size", "10"), ("count", "3")]).await;
    wait_ok(&emu, &v).await;
    let vols: Vec<String> = v["volumes"].as_array().unwrap().iter().map(s).collect();
    let a = ok(
        &emu,
        "AttachVolumes",
        &[
            ("volumes.1", &vols[0]),
            ("volumes.2", &vols[1]),
            ("instance", &inst),
        ],
    )
    .await;
    let msg = err(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vols[2]), ("instance", &inst)],
        5200,
        &inst,
    )
    .await;
    assert!(msg.contains("limit of 2 volumes"), "{msg}");
    wait_ok(&emu, &a).await;
    let t = ok(&emu, "TerminateInstances", &[("instances.1", &inst)]).await;
    let d = ok(&emu, "DescribeInstances", &[("instances.1", &inst)]).await;
    assert_eq!(d["instance_set"][0]["transition_status"], "terminating");
    wait_ok(&emu, &t).await;
    let d = ok(&emu, "DescribeInstances", &[("status.1", "terminated")]).await;
    assert_eq!(d["total_count"], 1);
    let d = ok(&emu, "DescribeVolumes", &[("status.1", "available")]).await;
    assert_eq!(d["total_count"], 3);
    err(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vols[2]), ("instance", &inst)],
        1400,
        "terminated",
    )
    .await;

    // Stop / start and run.
    let other = node(&emu, 1).await;
    let st = ok(&emu, "StopInstances", &[("instances.1", &other)]).await;
    wait_ok(&emu, &st).await;
    err(
        &emu,
        "StopInstances",
        &[("instances.1", &other)],
        1400,
        "stopped",
    )
    .await;
    let st = ok(&emu, "StartInstances", &[("instances.1", &other)]).await;
    wait_ok(&emu, &st).await;
    let run = ok(
        &emu,
        "RunInstances",
        &[("instance_name", "node-4"), ("count", "1")],
    )
    .await;
    wait_ok(&emu, &run).await;
    let id = s(&run["instances"][0]);
    let d = ok(&emu, "DescribeInstances", &[("instances.1", &id)]).await;
    assert_eq!(d["instance_set"][0]["status"], "running");
    // .11 is free again (node-1 terminated), so the new instance reuses it.
    assert_eq!(
        d["instance_set"][0]["vxnets"][0]["private_ip"],
        "172.30.1.11"
    );
    emu.shutdown().await;
}

#[derive(Debug, Default)]
struct RecordingLb {
    specs: Mutex<Vec<LbSpec>>,
    deleted: Mutex<Vec<String>>,
}

impl LbDriver for RecordingLb {
    fn apply(&self, spec: &LbSpec) -> DpResult<()> {
        self.specs.lock().unwrap().push(spec.clone());
        Ok(())
    }
    fn delete(&self, id: &str) -> DpResult<()> {
        self.deleted.lock().unwrap().push(id.to_string());
        Ok(())
    }
    fn backend_health(&self, _: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    fn shutdown(&self) -> DpResult<()> {
        Ok(())
    }
}

#[tokio::test]
async fn load_balancer_flow() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(RecordingLb::default());
    let mut dp = DataPlane::noop();
    dp.lbs = rec.clone();
    let emu = Emulator::start(EmulatorConfig {
        data_plane: dp,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let inst = node(&emu, 0).await;
    let e = ok(
        &emu,
        "AllocateEips",
        &[("bandwidth", "10"), ("eip_name", "lb")],
    )
    .await;
    let eip = s(&e["eips"][0]);
    let d = ok(&emu, "DescribeEips", &[("eips.1", &eip)]).await;
    assert_eq!(d["eip_set"][0]["eip_addr"], "127.77.0.1");
    let sg = ok(
        &emu,
        "CreateSecurityGroup",
        &[("security_group_name", "lb-sg")],
    )
    .await;
    let sg = s(&sg["security_group_id"]);
    ok(
        &emu,
        "AddSecurityGroupRules",
        &[
            ("security_group", &sg),
            ("rules.1.protocol", "tcp"),
            ("rules.1.val1", "80"),
            ("rules.1.val3", "10.0.0.0/8"),
        ],
    )
    .await;
    let c = ok(
        &emu,
        "CreateLoadBalancer",
        &[
            ("eips.1", &eip),
            ("loadbalancer_name", "web"),
            ("security_group", &sg),
        ],
    )
    .await;
    let lb = s(&c["loadbalancer_id"]);
    err(&emu, "ReleaseEips", &[("eips.1", &eip)], 1400, &eip).await;
    wait_ok(&emu, &c).await;
    let d = ok(&emu, "DescribeEips", &[("eips.1", &eip)]).await;
    assert_eq!(d["eip_set"][0]["status"], "associated");
    assert_eq!(d["eip_set"][0]["resource"]["resource_id"], lb);
    let msg = err(&emu, "ReleaseEips", &[("eips.1", &eip)], 1400, "associated").await;
    assert!(msg.contains(&eip));

    // Listener validation names the record field.
    err(
        &emu,
        "AddLoadBalancerListeners",
        &[
            ("loadbalancer", &lb),
            ("listeners.1.listener_port", "80"),
            ("listeners.1.listener_protocol", "tcp"),
            ("listeners.2.listener_port", "eighty"),
            ("listeners.2.listener_protocol", "tcp"),
        ],
        1100,
        "[listeners.2.listener_port]",
    )
    .await;
    err(
        &emu,
        "AddLoadBalancerListeners",
        &[
            ("loadbalancer", &lb),
            ("listeners.1.listener_port", "443"),
            ("listeners.1.listener_protocol", "https"),
        ],
        1100,
        "[listeners.1.server_certificate_id]",
    )
    .await;
    let l = ok(
        &emu,
        "AddLoadBalancerListeners",
        &[
            ("loadbalancer", &lb),
            ("listeners.1.listener_port", "80"),
            ("listeners.1.listener_protocol", "http"),
            ("listeners.1.healthy_check_method", "http|/healthz"),
        ],
    )
    .await;
    let lst = s(&l["loadbalancer_listeners"][0]);
    err(
        &emu,
        "AddLoadBalancerListeners",
        &[
            ("loadbalancer", &lb),
            ("listeners.1.listener_port", "80"),
            ("listeners.1.listener_protocol", "tcp"),
        ],
        2110,
        &lst,
    )
    .await;
    let pol = ok(
        &emu,
        "CreateLoadBalancerPolicy",
        &[("loadbalancer_policy_name", "api"), ("operator", "or")],
    )
    .await;
    let pol = s(&pol["loadbalancer_policy_id"]);
    ok(
        &emu,
        "AddLoadBalancerPolicyRules",
        &[
            ("loadbalancer_policy", &pol),
            ("rules.1.rule_type", "url"),
            ("rules.1.val", "/api"),
        ],
    )
    .await;
    err(
        &emu,
        "AddLoadBalancerPolicyRules",
        &[
            ("loadbalancer_policy", &pol),
            ("rules.1.rule_type", "url"),
            ("rules.1.val", "api"),
        ],
        1100,
        "[rules.1.val]",
    )
    .await;
    let b = ok(
        &emu,
        "AddLoadBalancerBackends",
        &[
            ("loadbalancer_listener", &lst),
            ("backends.1.resource_id", &inst),
            ("backends.1.port", "30080"),
            ("backends.2.resource_id", "10.244.1.5"),
            ("backends.2.port", "8080"),
            ("backends.2.loadbalancer_policy_id", &pol),
        ],
    )
    .await;
    assert_eq!(b["loadbalancer_backends"].as_array().unwrap().len(), 2);
    err(
        &emu,
        "AddLoadBalancerBackends",
        &[
            ("loadbalancer_listener", &lst),
            ("backends.1.resource_id", &inst),
            ("backends.1.port", "30080"),
        ],
        2110,
        "already has backend",
    )
    .await;
    err(
        &emu,
        "DeleteLoadBalancerPolicies",
        &[("loadbalancer_policies.1", &pol)],
        5400,
        &pol,
    )
    .await;
    let d = ok(
        &emu,
        "DescribeLoadBalancers",
        &[("loadbalancers.1", &lb), ("verbose", "1")],
    )
    .await;
    let lbv = &d["loadbalancer_set"][0];
    assert_eq!(lbv["is_applied"], 0);
    assert_eq!(lbv["status"], "active");
    assert_eq!(lbv["listeners"][0]["backends"][0]["status"], "up");
    assert_eq!(lbv["eips"][0]["eip_id"], eip);

    let u = ok(&emu, "UpdateLoadBalancers", &[("loadbalancers.1", &lb)]).await;
    wait_ok(&emu, &u).await;
    let d = ok(&emu, "DescribeLoadBalancers", &[("loadbalancers.1", &lb)]).await;
    assert_eq!(d["loadbalancer_set"][0]["is_applied"], 1);
    {
        let specs = rec.specs.lock().unwrap();
        let spec = specs.last().unwrap();
        assert_eq!(spec.bind_addresses, vec!["127.77.0.1".to_string()]);
        let (_, backends) = &spec.backends[0];
        assert_eq!(backends[0].address, "172.30.1.11");
        assert_eq!(backends[1].address, "10.244.1.5");
        assert_eq!(spec.policies[0].rules[0].val, "/api");
        assert_eq!(spec.source_cidrs, vec!["10.0.0.0/8".to_string()]);
    }
    err(
        &emu,
        "DeleteSecurityGroups",
        &[("security_groups.1", &sg)],
        5400,
        &lb,
    )
    .await;

    // Internal LB on the vxnet gets a private IP.
    let vx = ok(&emu, "DescribeVxnets", &[]).await;
    let vxnet = s(&vx["vxnet_set"][0]["vxnet_id"]);
    let c2 = ok(
        &emu,
        "CreateLoadBalancer",
        &[("vxnet", &vxnet), ("private_ip", "172.30.1.50")],
    )
    .await;
    wait_ok(&emu, &c2).await;
    let d = ok(
        &emu,
        "DescribeLoadBalancers",
        &[("loadbalancers.1", &s(&c2["loadbalancer_id"]))],
    )
    .await;
    assert_eq!(d["loadbalancer_set"][0]["private_ips"][0], "172.30.1.50");
    err(
        &emu,
        "CreateLoadBalancer",
        &[("vxnet", &vxnet), ("private_ip", "172.30.1.50")],
        2110,
        "172.30.1.50",
    )
    .await;
    err(&emu, "CreateLoadBalancer", &[], 1100, "eips.1").await;

    let del = ok(&emu, "DeleteLoadBalancers", &[("loadbalancers.1", &lb)]).await;
    wait_ok(&emu, &del).await;
    assert_eq!(
        rec.deleted.lock().unwrap().as_slice(),
        std::slice::from_ref(&lb)
    );
    let d = ok(&emu, "DescribeEips", &[("eips.1", &eip)]).await;
    assert_eq!(d["eip_set"][0]["status"], "available");
    let d = ok(
        &emu,
        "DescribeLoadBalancerListeners",
        &[("loadbalancer", &lb)],
    )
    .await;
    assert_eq!(d["total_count"], 0);
    let r = ok(&emu, "ReleaseEips", &[("eips.1", &eip)]).await;
    wait_ok(&emu, &r).await;
    ok(&emu, "DeleteSecurityGroups", &[("security_groups.1", &sg)]).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn router_statics_and_tags_and_paging() {
    let (emu, _d) = start().await;
    let r = ok(&emu, "DescribeRouters", &[]).await;
    let router = s(&r["router_set"][0]["router_id"]);
    err(
        &emu,
        "AddRouterStatics",
        &[
            ("router", &router),
            ("statics.1.static_type", "9"),
            ("statics.1.val1", "10.244.1.0/24"),
            ("statics.1.val2", "192.168.1.1"),
        ],
        1100,
        "[statics.1.val2]",
    )
    .await;
    err(
        &emu,
        "AddRouterStatics",
        &[
            ("router", &router),
            ("statics.1.static_type", "9"),
            ("statics.1.val1", "10.244.1.1/24"),
            ("statics.1.val2", "172.30.1.11"),
        ],
        1100,
        "[statics.1.val1]",
    )
    .await;
    let a = ok(
        &emu,
        "AddRouterStatics",
        &[
            ("router", &router),
            ("statics.1.static_type", "9"),
            ("statics.1.val1", "10.244.1.0/24"),
            ("statics.1.val2", "172.30.1.11"),
        ],
    )
    .await;
    let st = s(&a["router_statics"][0]);
    err(
        &emu,
        "AddRouterStatics",
        &[
            ("router", &router),
            ("statics.1.static_type", "9"),
            ("statics.1.val1", "10.244.1.0/24"),
            ("statics.1.val2", "172.30.1.12"),
        ],
        2110,
        &st,
    )
    .await;
    let d = ok(&emu, "DescribeRouters", &[("routers.1", &router)]).await;
    assert_eq!(d["router_set"][0]["is_applied"], 0);
    let u = ok(&emu, "UpdateRouters", &[("routers.1", &router)]).await;
    wait_ok(&emu, &u).await;
    let d = ok(
        &emu,
        "DescribeRouterStatics",
        &[("router", &router), ("static_type", "9")],
    )
    .await;
    assert_eq!(d["router_static_set"][0]["is_applied"], 1);
    let d = ok(&emu, "DescribeRouters", &[("routers.1", &router)]).await;
    assert_eq!(d["router_set"][0]["is_applied"], 1);

    // Tags.
    let t = ok(&emu, "CreateTag", &[("tag_name", "cluster-a")]).await;
    let tag = s(&t["tag_id"]);
    err(&emu, "CreateTag", &[("tag_name", "cluster-a")], 2110, &tag).await;
    let inst = node(&emu, 2).await;
    ok(
        &emu,
        "AttachTags",
        &[
            ("resource_tag_pairs.1.tag_id", &tag),
            ("resource_tag_pairs.1.resource_type", "instance"),
            ("resource_tag_pairs.1.resource_id", &inst),
        ],
    )
    .await;
    err(
        &emu,
        "AttachTags",
        &[
            ("resource_tag_pairs.1.tag_id", &tag),
            ("resource_tag_pairs.1.resource_type", "planet"),
            ("resource_tag_pairs.1.resource_id", &inst),
        ],
        1100,
        "[resource_tag_pairs.1.resource_type]",
    )
    .await;
    let d = ok(&emu, "DescribeInstances", &[("tags.1", &tag)]).await;
    assert_eq!(d["total_count"], 1);
    assert_eq!(d["instance_set"][0]["tags"][0]["tag_name"], "cluster-a");
    let d = ok(&emu, "DescribeTags", &[("tags.1", &tag), ("verbose", "1")]).await;
    assert_eq!(d["tag_set"][0]["resource_count"], 1);
    ok(&emu, "DeleteTags", &[("tags.1", &tag)]).await;
    let d = ok(&emu, "DescribeInstances", &[("instances.1", &inst)]).await;
    assert_eq!(d["instance_set"][0]["tags"].as_array().unwrap().len(), 0);

    // Paging in creation order.
    for i in 0..5 {
        ok(&emu, "CreateTag", &[("tag_name", &format!("t{i}"))]).await;
    }
    let d = ok(&emu, "DescribeTags", &[("offset", "1"), ("limit", "2")]).await;
    assert_eq!(d["total_count"], 5);
    let names: Vec<String> = d["tag_set"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| s(&t["tag_name"]))
        .collect();
    assert_eq!(names, vec!["t1", "t2"]);
    let d = ok(&emu, "DescribeTags", &[("limit", "1000")]).await;
    assert_eq!(d["tag_set"].as_array().unwrap().len(), 5);
    err(&emu, "DescribeTags", &[("limit", "0")], 1100, "[limit]").await;
    err(&emu, "DescribeTags", &[("offset", "-1")], 1100, "[offset]").await;
    emu.shutdown().await;
}

#[tokio::test]
async fn store_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(config(dir.path())).await.unwrap();
    let v = ok(
        &emu,
        "CreateVolumes",
        &[("size", "30"), ("volume_name", "keep")],
    )
    .await;
    wait_ok(&emu, &v).await;
    let vol = s(&v["volumes"][0]);
    let before = ok(&emu, "DescribeInstances", &[]).await;
    emu.shutdown().await;

    let emu = Emulator::start(config(dir.path())).await.unwrap();
    assert!(!emu.first_start());
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vol)]).await;
    assert_eq!(d["volume_set"][0]["status"], "available");
    assert_eq!(d["volume_set"][0]["size"], 30);
    let after = ok(&emu, "DescribeInstances", &[]).await;
    assert_eq!(before["instance_set"], after["instance_set"]);
    emu.shutdown().await;

    // A different zone on the same data dir is refused.
    let bad = Emulator::start(EmulatorConfig {
        zone: "other".into(),
        ..config(dir.path())
    })
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn unfinished_job_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig {
        job_delay_ms: 60_000,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let inst = node(&emu, 0).await;
    let v = ok(&emu, "CreateVolumes", &[("size", "10")]).await;
    let vol = s(&v["volumes"][0]);
    let j = ok(&emu, "DescribeJobs", &[("jobs.1", &s(&v["job_id"]))]).await;
    assert_eq!(j["job_set"][0]["status"], "pending");
    emu.shutdown().await;

    let emu = Emulator::start(config(dir.path())).await.unwrap();
    wait_ok(&emu, &v).await;
    let a = ok(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vol), ("instance", &inst)],
    )
    .await;
    wait_ok(&emu, &a).await;
    emu.shutdown().await;

    // Attachments come back at start through volumes.restore.
    let emu = Emulator::start(config(dir.path())).await.unwrap();
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vol)]).await;
    assert_eq!(d["volume_set"][0]["status"], "in-use");
    assert_eq!(d["volume_set"][0]["instance"]["instance_id"], inst);
    emu.shutdown().await;
}

#[tokio::test]
async fn fault_injection() {
    let (emu, _d) = start().await;
    let inst = node(&emu, 0).await;
    emu.set_faults(FaultConfig {
        errors: vec![ErrorFault {
            action: "DescribeVolumes".into(),
            code: 5100,
            rate: 1.0,
            remaining: Some(1),
            message: None,
        }],
        ..Default::default()
    })
    .unwrap();
    err(&emu, "DescribeVolumes", &[], 5100, "injected").await;
    ok(&emu, "DescribeVolumes", &[]).await;

    emu.set_faults(FaultConfig {
        throttle: Some(Throttle {
            max_calls: 2,
            window_ms: 60_000,
        }),
        ..Default::default()
    })
    .unwrap();
    ok(&emu, "DescribeJobs", &[]).await;
    ok(&emu, "DescribeJobs", &[]).await;
    err(&emu, "DescribeJobs", &[], 2500, "quota").await;
    emu.clear_faults();

    // A failed create leaves nothing behind.
    emu.set_faults(FaultConfig {
        job_failures: vec![JobFault {
            action: "CreateVolumes".into(),
            rate: 1.0,
            remaining: Some(1),
        }],
        ..Default::default()
    })
    .unwrap();
    let v = ok(&emu, "CreateVolumes", &[("size", "10")]).await;
    let j = wait_job(&emu, &v).await;
    assert_eq!(j["status"], "failed");
    assert_eq!(j["error_code"], 5000);
    let d = ok(
        &emu,
        "DescribeVolumes",
        &[("volumes.1", &s(&v["volumes"][0]))],
    )
    .await;
    assert_eq!(d["total_count"], 0);

    // A failed attach rolls the volume back to available.
    let v = ok(&emu, "CreateVolumes", &[("size", "10")]).await;
    wait_ok(&emu, &v).await;
    let vol = s(&v["volumes"][0]);
    emu.set_faults(FaultConfig {
        job_failures: vec![JobFault {
            action: "AttachVolumes".into(),
            rate: 1.0,
            remaining: None,
        }],
        ..Default::default()
    })
    .unwrap();
    let a = ok(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vol), ("instance", &inst)],
    )
    .await;
    assert_eq!(wait_job(&emu, &a).await["status"], "failed");
    let d = ok(&emu, "DescribeVolumes", &[("volumes.1", &vol)]).await;
    assert_eq!(d["volume_set"][0]["status"], "available");
    assert_eq!(d["volume_set"][0]["transition_status"], "");
    assert!(d["volume_set"][0]["instance"].is_null());

    // A stuck job stays working until the fault is cleared.
    emu.set_faults(FaultConfig {
        stuck: vec![StuckFault {
            action: "AttachVolumes".into(),
            remaining: Some(1),
        }],
        ..Default::default()
    })
    .unwrap();
    let a = ok(
        &emu,
        "AttachVolumes",
        &[("volumes.1", &vol), ("instance", &inst)],
    )
    .await;
    let id = s(&a["job_id"]);
    let mut saw_working = false;
    for _ in 0..100 {
        let j = ok(&emu, "DescribeJobs", &[("jobs.1", &id)]).await;
        if j["job_set"][0]["status"] == "working" {
            saw_working = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_working);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let j = ok(&emu, "DescribeJobs", &[("jobs.1", &id)]).await;
    assert_eq!(j["job_set"][0]["status"], "working");
    emu.clear_faults();
    wait_ok(&emu, &a).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig {
        admin_enabled: true,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let body = r#"{"errors":[{"action":"*","code":5300,"remaining":1}]}"#;
    let (status, _) = raw(
        &emu,
        format!("PUT /admin/faults HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
    )
    .await;
    assert_eq!(status, 200);
    err(&emu, "DescribeJobs", &[], 5300, "injected").await;
    let (status, text) = raw(
        &emu,
        "GET /admin/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 200);
    let cfg: FaultConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(cfg.errors[0].remaining, Some(0));
    let bad = r#"{"errors":[{"action":"*","code":5300,"rate":3}]}"#;
    let (status, text) = raw(
        &emu,
        format!("PUT /admin/faults HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{bad}", bad.len()),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains("errors[0].rate"), "{text}");
    let (_, text) = raw(
        &emu,
        "GET /admin/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(stats["DescribeJobs"]["by_ret_code"]["5300"], 1, "{stats}");
    let (status, _) = raw(&emu, "POST /admin/stats/reset HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(status, 204);
    assert!(emu.stats().is_empty());
    let (status, _) = raw(
        &emu,
        "DELETE /admin/faults HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert_eq!(status, 204);
    emu.shutdown().await;
}

#[tokio::test]
async fn tls_serves_with_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(EmulatorConfig {
        tls: true,
        ..config(dir.path())
    })
    .await
    .unwrap();
    assert!(emu.endpoint().starts_with("https://127.0.0.1:"));
    let cert = emu.tls_cert_file().unwrap();
    assert_eq!(cert, dir.path().join("tls/cert.pem"));
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(emu.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let q = signed_query(
        SECRET,
        SignatureMethod::HmacSha256,
        "GET",
        "/iaas/",
        &pairs("DescribeZones", &[]),
    );
    tls.write_all(
        format!("GET /iaas/?{q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("unknown action [DescribeZones]"), "{text}");
    emu.shutdown().await;
}

#[tokio::test]
async fn eip_association_and_policy_apply() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Arc::new(RecordingLb::default());
    let mut dp = DataPlane::noop();
    dp.lbs = rec.clone();
    let emu = Emulator::start(EmulatorConfig {
        data_plane: dp,
        eip_pool: "127.77.0.0/30".into(),
        ..config(dir.path())
    })
    .await
    .unwrap();
    let e = ok(&emu, "AllocateEips", &[("count", "2")]).await;
    let (e1, e2) = (s(&e["eips"][0]), s(&e["eips"][1]));
    // A /30 has two usable addresses.
    err(&emu, "AllocateEips", &[], 5200, "127.77.0.0/30").await;
    let c = ok(&emu, "CreateLoadBalancer", &[("eips.1", &e1)]).await;
    let lb = s(&c["loadbalancer_id"]);
    wait_ok(&emu, &c).await;
    let a = ok(
        &emu,
        "AssociateEipsToLoadBalancer",
        &[("eips.1", &e2), ("loadbalancer", &lb)],
    )
    .await;
    let d = ok(&emu, "DescribeEips", &[("eips.1", &e2)]).await;
    assert_eq!(d["eip_set"][0]["transition_status"], "associating");
    wait_ok(&emu, &a).await;
    let d = ok(&emu, "DescribeLoadBalancers", &[("loadbalancers.1", &lb)]).await;
    assert_eq!(
        d["loadbalancer_set"][0]["eips"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        rec.specs.lock().unwrap().last().unwrap().bind_addresses,
        vec!["127.77.0.1".to_string(), "127.77.0.2".to_string()]
    );
    let dz = ok(
        &emu,
        "DissociateEipsFromLoadBalancer",
        &[("eips.1", &e1), ("loadbalancer", &lb)],
    )
    .await;
    wait_ok(&emu, &dz).await;
    let d = ok(&emu, "DescribeEips", &[("status.1", "available")]).await;
    assert_eq!(d["total_count"], 1);
    assert_eq!(d["eip_set"][0]["eip_id"], e1);
    err(
        &emu,
        "DissociateEipsFromLoadBalancer",
        &[("eips.1", &e1), ("loadbalancer", &lb)],
        1400,
        "not associated",
    )
    .await;

    // Applying a policy re-applies the LBs whose backends use it.
    let l = ok(
        &emu,
        "AddLoadBalancerListeners",
        &[
            ("loadbalancer", &lb),
            ("listeners.1.listener_port", "8080"),
            ("listeners.1.listener_protocol", "http"),
        ],
    )
    .await;
    let pol = s(&ok(&emu, "CreateLoadBalancerPolicy", &[]).await["loadbalancer_policy_id"]);
    ok(
        &emu,
        "AddLoadBalancerBackends",
        &[
            ("loadbalancer_listener", &s(&l["loadbalancer_listeners"][0])),
            ("backends.1.resource_id", "10.1.2.3"),
            ("backends.1.port", "80"),
            ("backends.1.loadbalancer_policy_id", &pol),
        ],
    )
    .await;
    let before = rec.specs.lock().unwrap().len();
    let ap = ok(
        &emu,
        "ApplyLoadBalancerPolicy",
        &[("loadbalancer_policy", &pol)],
    )
    .await;
    wait_ok(&emu, &ap).await;
    for _ in 0..100 {
        if rec.specs.lock().unwrap().len() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rec.specs.lock().unwrap().len() > before);
    let d = ok(
        &emu,
        "DescribeLoadBalancerPolicies",
        &[("loadbalancer_policies.1", &pol)],
    )
    .await;
    assert_eq!(d["loadbalancer_policy_set"][0]["is_applied"], 1);
    emu.shutdown().await;
}

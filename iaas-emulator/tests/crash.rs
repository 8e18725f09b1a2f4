//! Crash safety of the binary: SIGKILL right after acknowledged mutations,
//! restart on the same data dir, everything acknowledged is still there.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iaas_client::sign::{SignatureMethod, signed_query};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kills the child on drop so a failing test leaves no process behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path) -> (Proc, String) {
    let addr_file = dir.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(env!("CARGO_BIN_EXE_iaas-emulator"))
        .args(["serve", "--control-plane-only", "--data-dir"])
        .arg(dir)
        .arg("--addr-file")
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iaas-emulator");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            return (proc, a.trim().to_string());
        }
        assert!(
            Instant::now() < deadline,
            "emulator did not write its address"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn creds(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("credentials.yaml")).unwrap();
    let y: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    (
        y["qy_access_key_id"].as_str().unwrap().to_string(),
        y["qy_secret_access_key"].as_str().unwrap().to_string(),
    )
}

async fn call(
    addr: &str,
    key: &str,
    secret: &str,
    action: &str,
    extra: &[(&str, &str)],
) -> Option<Value> {
    let ts = iaas_emulator::util::format_time_stamp(time::OffsetDateTime::now_utc());
    let mut p: Vec<(String, String)> = [
        ("action", action),
        ("zone", "emu1"),
        ("time_stamp", ts.as_str()),
        ("access_key_id", key),
        ("version", "1"),
        ("signature_method", "HmacSHA256"),
        ("signature_version", "1"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    p.sort();
    let q = signed_query(secret, SignatureMethod::HmacSha256, "GET", "/iaas/", &p);
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET /iaas/?{q} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<String> = Vec::new();
    for round in 0..3 {
        let (mut proc, addr) = spawn(dir.path());
        let (key, secret) = creds(dir.path());
        // Fire mutations and kill mid-stream; only answered ones count.
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150 + 50 * round)).await;
            let _ = proc.0.kill();
            let _ = proc.0.wait();
            proc
        });
        loop {
            match call(
                &addr,
                &key,
                &secret,
                "CreateTag",
                &[("tag_name", &format!("r{round}-{}", acked.len()))],
            )
            .await
            {
                Some(v) if v["ret_code"] == 0 => {
                    acked.push(v["tag_id"].as_str().unwrap().to_string())
                }
                Some(v) => panic!("unexpected answer {v}"),
                None => break,
            }
        }
        drop(killer.await.unwrap());
    }
    assert!(!acked.is_empty());
    eprintln!("{} tags acknowledged across 3 SIGKILLs", acked.len());
    let (_proc, addr) = spawn(dir.path());
    let (key, secret) = creds(dir.path());
    let v = call(
        &addr,
        &key,
        &secret,
        "DescribeTags",
        &[("limit", "100"), ("offset", "0")],
    )
    .await
    .unwrap();
    let total = v["total_count"].as_u64().unwrap() as usize;
    // Every acknowledged tag survived; at most one unacknowledged extra per kill.
    assert!(
        total >= acked.len() && total <= acked.len() + 3,
        "{total} vs {}",
        acked.len()
    );
    let mut offset = 0;
    let mut found = std::collections::BTreeSet::new();
    while offset < total {
        let o = offset.to_string();
        let v = call(
            &addr,
            &key,
            &secret,
            "DescribeTags",
            &[("limit", "100"), ("offset", &o)],
        )
        .await
        .unwrap();
        for t in v["tag_set"].as_array().unwrap() {
            found.insert(t["tag_id"].as_str().unwrap().to_string());
        }
        offset += 100;
    }
    for id in &acked {
        assert!(found.contains(id), "acknowledged tag {id} was lost");
    }
}

//! Group commit: concurrent writers all durable; a failed transaction fails
//! its whole group and everything staged after it, and loses nothing else.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use iaas_client::sign::{SignatureMethod, signed_query};
use serde_json::Value;

use crate::config::Credentials;
use crate::emulator::Shared;
use crate::error::EmuError;
use crate::state::State;
use crate::store::Store;
use crate::util::format_time_stamp;
use crate::{Emulator, EmulatorConfig};

const KEY: &str = "EMUCOMMITKEY";
const SECRET: &str = "commit-secret";

fn config(dir: &std::path::Path) -> EmulatorConfig {
    EmulatorConfig {
        job_delay_ms: 0,
        credentials: Some(Credentials {
            access_key_id: KEY.into(),
            secret_access_key: SECRET.into(),
        }),
        ..EmulatorConfig::for_tests(dir)
    }
}

/// One signed call straight into the request pipeline (no HTTP: the
/// dispatch, lock, stage and wait are the same).
async fn call(shared: &Arc<Shared>, action: &str, params: &[(&str, &str)]) -> Value {
    let ts = format_time_stamp(time::OffsetDateTime::now_utc());
    let mut pairs: Vec<(String, String)> = [
        ("action", action),
        ("zone", "emu1"),
        ("time_stamp", ts.as_str()),
        ("access_key_id", KEY),
        ("version", "1"),
        ("signature_method", "HmacSHA256"),
        ("signature_version", "1"),
    ]
    .into_iter()
    .chain(params.iter().copied())
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    pairs.sort();
    let q = signed_query(SECRET, SignatureMethod::HmacSha256, "GET", "/iaas/", &pairs);
    crate::server::process(shared, "GET", &q).await
}

/// `call` on a task of its own, as the server runs requests.
fn spawn_call(
    shared: &Arc<Shared>,
    action: &'static str,
    params: Vec<(&'static str, String)>,
) -> tokio::task::JoinHandle<Value> {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let p: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        call(&shared, action, &p).await
    })
}

/// The state a fresh open of the data dir finds.
fn reopen(dir: &std::path::Path) -> State {
    let store = Store::open(dir).unwrap();
    let mut st = State::default();
    st.load(&store).unwrap();
    st
}

/// Tag names in the cache right now (what has been staged, durable or not).
async fn cached_tags(shared: &Shared) -> BTreeSet<String> {
    let st = shared.state.lock().await;
    st.tags.values().map(|t| t.tag_name.clone()).collect()
}

/// Waits until the cache holds every name (they are staged).
async fn until_staged(shared: &Shared, names: &[&str]) {
    for _ in 0..1000 {
        let have = cached_tags(shared).await;
        if names.iter().all(|n| have.contains(*n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{names:?} never staged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_all_durable() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(config(dir.path())).await.unwrap();
    let shared = Arc::clone(emu.shared());
    // Slow every transaction a little so that writers queue behind it and
    // groups form even on a disk whose fsync is nearly free.
    shared
        .committer
        .set_hook(Some(Box::new(|_: &[crate::store::Write]| {
            std::thread::sleep(Duration::from_millis(2));
            Ok(())
        })));
    let before = emu.commit_stats();

    const WRITERS: usize = 32;
    const EACH: usize = 4;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let shared = Arc::clone(&shared);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..EACH {
                let name = format!("w{w}-{i}");
                let v = call(
                    &shared,
                    "CreateVolumes",
                    &[("size", "10"), ("volume_name", &name)],
                )
                .await;
                assert_eq!(v["ret_code"], 0, "{name}: {v}");
                let id = v["volumes"][0].as_str().unwrap().to_string();
                acked.push((id, name));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), WRITERS * EACH);

    let stats = emu.commit_stats();
    let (txns, batches) = (
        stats.transactions - before.transactions,
        stats.batches - before.batches,
    );
    assert!(
        batches >= (WRITERS * EACH) as u64,
        "every create is a batch: {stats:?}"
    );
    assert!(
        txns < batches && stats.largest_group > 1,
        "writers queued behind a slow transaction must share transactions: {stats:?}"
    );
    assert_eq!(stats.failed_transactions, 0);
    drop(shared);
    emu.shutdown().await;

    // Every acknowledged write is in the store, found by a fresh open.
    let st = reopen(dir.path());
    for (id, name) in &acked {
        let v = st.volumes.get(id).unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!(&v.volume_name, name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_commit_fails_its_group_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emulator::start(config(dir.path())).await.unwrap();
    let shared = Arc::clone(emu.shared());

    for name in ["a1", "a2", "a3"] {
        let v = call(&shared, "CreateTag", &[("tag_name", name)]).await;
        assert_eq!(v["ret_code"], 0, "{v}");
    }

    // The failpoint: each transaction reports itself, then waits for the
    // test's verdict (true = write it, false = fail it).
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let (verdict, verdict_rx) = std::sync::mpsc::channel::<bool>();
    shared
        .committer
        .set_hook(Some(Box::new(move |rows: &[crate::store::Write]| {
            let _ = entered_tx.send(rows.len());
            match verdict_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(true) => Ok(()),
                _ => Err(EmuError::Store("injected commit failure".into())),
            }
        })));
    let before = emu.commit_stats();

    // b's transaction is held, so r1..r5 queue behind it as one group.
    let b = spawn_call(&shared, "CreateTag", vec![("tag_name", "b".into())]);
    entered.recv().await.unwrap();
    let names = ["r1", "r2", "r3", "r4", "r5"];
    let group: Vec<_> = names
        .iter()
        .map(|n| spawn_call(&shared, "CreateTag", vec![("tag_name", n.to_string())]))
        .collect();
    until_staged(&shared, &names).await;
    // A read that saw r1..r5 must not show them to anyone: they will fail.
    let read = spawn_call(&shared, "DescribeTags", vec![("limit", "100".into())]);
    verdict.send(true).unwrap();

    // The group r1..r5 is now in the committer; r6 is staged behind it,
    // computed on top of it.
    let rows = entered.recv().await.unwrap();
    assert!(rows >= 5, "r1..r5 share one transaction ({rows} rows)");
    let r6 = spawn_call(&shared, "CreateTag", vec![("tag_name", "r6".into())]);
    until_staged(&shared, &["r6"]).await;
    verdict.send(false).unwrap();

    let vb = b.await.unwrap();
    assert_eq!(
        vb["ret_code"], 0,
        "b was committed before the failure: {vb}"
    );
    for (t, n) in group.into_iter().zip(names) {
        let v = t.await.unwrap();
        assert_eq!(v["ret_code"], 5000, "{n} was in the failed group: {v}");
        assert!(v["message"].as_str().unwrap().contains("commit failed"));
    }
    let v6 = r6.await.unwrap();
    assert_eq!(
        v6["ret_code"], 5000,
        "r6 was staged on the failed group: {v6}"
    );
    let vr = read.await.unwrap();
    if vr["ret_code"] == 0 {
        let shown: Vec<&str> = vr["tag_set"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|t| t["tag_name"].as_str())
            .collect();
        assert!(
            shown.iter().all(|n| !n.starts_with('r')),
            "a read showed changes that were rolled back: {shown:?}"
        );
    } else {
        assert_eq!(vr["ret_code"], 5000, "{vr}");
    }
    shared.committer.set_hook(None);

    let stats = emu.commit_stats();
    assert_eq!(stats.failed_transactions - before.failed_transactions, 1);
    assert_eq!(
        stats.failed_batches - before.failed_batches,
        6,
        "r1..r6: {stats:?}"
    );
    assert!(stats.largest_group >= 5, "{stats:?}");

    // The cache went back to what was durable; the emulator keeps serving.
    let expect: BTreeSet<String> = ["a1", "a2", "a3", "b"].map(String::from).into();
    assert_eq!(cached_tags(&shared).await, expect);
    let v = call(&shared, "CreateTag", &[("tag_name", "c")]).await;
    assert_eq!(v["ret_code"], 0, "{v}");
    let v = call(&shared, "CreateTag", &[("tag_name", "r1")]).await;
    assert_eq!(
        v["ret_code"], 0,
        "r1 never existed, so it can be created: {v}"
    );
    drop(shared);
    emu.shutdown().await;

    let st = reopen(dir.path());
    let stored: BTreeSet<String> = st.tags.values().map(|t| t.tag_name.clone()).collect();
    let expect: BTreeSet<String> = ["a1", "a2", "a3", "b", "c", "r1"].map(String::from).into();
    assert_eq!(stored, expect, "acknowledged tags kept, failed ones absent");
}

#[test]
fn merge_keeps_the_last_write_per_key() {
    let group = vec![
        super::Batch {
            seq: 1,
            writes: vec![
                ("t", "x".into(), Some(b"1".to_vec())),
                ("t", "y".into(), Some(b"1".to_vec())),
            ],
        },
        super::Batch {
            seq: 2,
            writes: vec![
                ("t", "x".into(), None),
                ("u", "x".into(), Some(b"2".to_vec())),
            ],
        },
        super::Batch {
            seq: 3,
            writes: vec![("t", "y".into(), Some(b"3".to_vec()))],
        },
    ];
    let merged = super::merge(group);
    assert_eq!(
        merged,
        vec![
            ("t", "x".to_string(), None),
            ("t", "y".to_string(), Some(b"3".to_vec())),
            ("u", "x".to_string(), Some(b"2".to_vec())),
        ]
    );
}

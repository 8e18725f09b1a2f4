//! The emulator as a process, SIGKILLed at arbitrary moments: nothing it
//! acknowledged is lost, and unfinished jobs finish (or fail cleanly) after a
//! restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use iaas_client::actions::*;
use suite_tests::EmulatorProcess;
use tokio::sync::Mutex;

fn quick(c: &mut iaas_client::Config) {
    c.retry.max_elapsed = Duration::from_millis(300);
    c.retry.initial_delay = Duration::from_millis(10);
    c.rate_limit.qps = 10_000;
    c.rate_limit.burst = 10_000;
    c.jobs.initial_poll = Duration::from_millis(20);
    c.jobs.max_poll = Duration::from_millis(100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_never_loses_an_acknowledged_change() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let emu = EmulatorProcess::spawn(dir.path(), &[]).unwrap();
        let client = emu.client(quick).unwrap();
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("r{round}-w{w}-{i}");
                    if let Ok(out) = client
                        .create_tag(&CreateTag {
                            tag_name: name.clone(),
                            description: None,
                        })
                        .await
                    {
                        acked.lock().await.push(out.tag_id);
                    }
                    i += 1;
                }
            }));
        }
        // Kill at a different moment each round, mid-traffic.
        tokio::time::sleep(Duration::from_millis(150 + 130 * round)).await;
        emu.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let acked = acked.lock().await.clone();
        assert!(
            !acked.is_empty(),
            "round {round}: nothing was written before the kill"
        );

        let emu = EmulatorProcess::spawn(dir.path(), &[]).unwrap();
        let client = emu.client(quick).unwrap();
        let tags = client
            .describe_tags_all(&DescribeTags::default())
            .await
            .unwrap();
        let present: std::collections::HashSet<_> = tags.iter().map(|t| t.tag_id.clone()).collect();
        let lost: Vec<_> = acked.iter().filter(|id| !present.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged tags lost: {lost:?}",
            lost.len()
        );
        emu.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_jobs_resume_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("emu.yaml");
    std::fs::write(&config, "job_delay_ms: 400\n").unwrap();
    let config_arg = config.to_str().unwrap();
    let emu = EmulatorProcess::spawn(dir.path(), &["--config", config_arg]).unwrap();
    let client = emu.client(quick).unwrap();
    let out = client
        .create_volumes(&CreateVolumes {
            size: 10,
            count: Some(3),
            volume_name: Some("crash".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    // The job is pending or working now; kill before it can finish.
    emu.kill();

    let emu = EmulatorProcess::spawn(dir.path(), &["--config", config_arg]).unwrap();
    let client = emu.client(quick).unwrap();
    let job = client
        .wait_job(&out.job_id, Some(Duration::from_secs(30)))
        .await;
    let vols = client
        .describe_volumes_all(&DescribeVolumes {
            volumes: out.volumes.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    match job {
        Ok(_) => {
            assert_eq!(vols.len(), 3);
            assert!(
                vols.iter()
                    .all(|v| v.status == "available" && v.transition_status.is_empty()),
                "{vols:?}"
            );
        }
        Err(iaas_client::Error::JobFailed { .. }) => {
            assert!(
                vols.iter()
                    .all(|v| v.transition_status.is_empty() && v.status != "available"),
                "{vols:?}"
            );
        }
        Err(e) => panic!("job neither finished nor failed cleanly: {e}"),
    }
    // And the store still accepts work.
    let out = client
        .create_volumes(&CreateVolumes {
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .wait_job(&out.job_id, Some(Duration::from_secs(30)))
        .await
        .unwrap();
}

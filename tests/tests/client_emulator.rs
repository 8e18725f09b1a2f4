//! The shared client against the in-process emulator over signed HTTP:
//! paging, job waiting, retries through injected faults, rate limiting.

use std::collections::BTreeSet;
use std::time::Duration;

use iaas_client::Error;
use iaas_client::actions::*;
use iaas_emulator::faults::{ErrorFault, FaultConfig, JobFault, StuckFault, Throttle};
use suite_tests::TestCloud;

fn fast_retries(config: &mut iaas_client::Config) {
    config.retry.initial_delay = Duration::from_millis(10);
    config.retry.max_delay = Duration::from_millis(100);
    config.rate_limit.qps = 1000;
    config.rate_limit.burst = 1000;
    config.jobs.initial_poll = Duration::from_millis(10);
    config.jobs.max_poll = Duration::from_millis(50);
}

fn errors(action: &str, code: i32, remaining: Option<u64>) -> FaultConfig {
    FaultConfig {
        errors: vec![ErrorFault {
            action: action.into(),
            code,
            rate: 1.0,
            remaining,
            message: None,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn paging_walks_every_page_exactly_once() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client_with(fast_retries).unwrap();
    for i in 0..230 {
        client
            .create_tag(&CreateTag {
                tag_name: format!("page-{i:03}"),
                description: None,
            })
            .await
            .unwrap();
    }
    let page = client
        .describe_tags(&DescribeTags {
            limit: Some(50),
            offset: Some(200),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total_count, 230);
    assert_eq!(page.items.len(), 30);
    let beyond = client
        .describe_tags(&DescribeTags {
            offset: Some(1000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total_count, 230);
    let all = client
        .describe_tags_all(&DescribeTags::default())
        .await
        .unwrap();
    let names: BTreeSet<_> = all.iter().map(|t| t.tag_name.clone()).collect();
    assert_eq!(all.len(), 230, "every tag once");
    assert_eq!(names.len(), 230, "no tag twice");
    // 3 pages of 100 for describe_all.
    assert_eq!(client.stats()["DescribeTags"].calls, 2 + 3);
    let search = client
        .describe_tags_all(&DescribeTags {
            search_word: Some("page-22".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(search.len(), 10);
}

#[tokio::test]
async fn wait_job_reports_success_failure_and_timeout() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client_with(fast_retries).unwrap();
    // Success.
    let out = client
        .create_volumes(&CreateVolumes {
            size: 10,
            volume_name: Some("ok".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let job = client
        .wait_job(&out.job_id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(job.status, "successful");
    // An injected job failure surfaces as JobFailed with the job's code.
    cloud
        .emulator
        .set_faults(FaultConfig {
            job_failures: vec![JobFault {
                action: "CreateVolumes".into(),
                rate: 1.0,
                remaining: Some(1),
            }],
            ..Default::default()
        })
        .unwrap();
    let out = client
        .create_volumes(&CreateVolumes {
            size: 10,
            volume_name: Some("doomed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    match client
        .wait_job(&out.job_id, Some(Duration::from_secs(20)))
        .await
    {
        Err(Error::JobFailed { code, .. }) => assert_eq!(code, 5000),
        other => panic!("expected JobFailed, got {other:?}"),
    }
    let left = client
        .describe_volumes_all(&DescribeVolumes {
            search_word: Some("doomed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        left.iter()
            .all(|v| v.status != "available" && v.status != "in-use"),
        "a failed create must not leave a usable volume: {left:?}"
    );
    // A stuck job times out with a clear error, then finishes once the fault is cleared.
    cloud
        .emulator
        .set_faults(FaultConfig {
            stuck: vec![StuckFault {
                action: "DeleteVolumes".into(),
                remaining: None,
            }],
            ..Default::default()
        })
        .unwrap();
    let vol = out_volume(&client, "ok").await;
    let del = client
        .delete_volumes(&DeleteVolumes::new([&vol]))
        .await
        .unwrap();
    let err = client
        .wait_job(&del.job_id, Some(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobTimeout { .. }), "{err:?}");
    assert!(err.to_string().contains(&del.job_id), "{err}");
    let v = client
        .describe_volumes(&DescribeVolumes {
            volumes: vec![vol.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        v.items[0].transition_status, "deleting",
        "a stuck job shows its transition"
    );
    cloud.emulator.clear_faults();
    client
        .wait_job(&del.job_id, Some(Duration::from_secs(20)))
        .await
        .unwrap();
}

async fn out_volume(client: &iaas_client::Client, name: &str) -> String {
    let v = client
        .describe_volumes_all(&DescribeVolumes {
            search_word: Some(name.into()),
            status: vec!["available".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    v.first().expect("volume").volume_id.clone()
}

#[tokio::test]
async fn retries_succeed_through_bursts_of_server_busy() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client_with(fast_retries).unwrap();
    cloud
        .emulator
        .set_faults(errors("*", 5100, Some(4)))
        .unwrap();
    let page = client
        .describe_instances(&DescribeInstances::default())
        .await
        .unwrap();
    assert!(page.total_count >= 1);
    let stats = client.stats();
    assert_eq!(stats["DescribeInstances"].calls, 1);
    assert_eq!(stats["DescribeInstances"].retries, 4, "{stats:?}");
    assert_eq!(stats["DescribeInstances"].errors, 0);
    // 5% random busy errors over 200 calls: every call still succeeds.
    cloud
        .emulator
        .set_faults(FaultConfig {
            errors: vec![ErrorFault {
                action: "*".into(),
                code: 5100,
                rate: 0.05,
                remaining: None,
                message: None,
            }],
            ..Default::default()
        })
        .unwrap();
    for _ in 0..200 {
        client
            .describe_vxnets(&DescribeVxnets::default())
            .await
            .unwrap();
    }
    let emu = cloud.emulator.stats();
    assert!(emu["DescribeVxnets"].calls >= 200);
}

#[tokio::test]
async fn quota_errors_back_off_and_succeed() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud
        .client_with(|c| {
            fast_retries(c);
            c.retry.initial_delay = Duration::from_millis(50);
            c.retry.max_delay = Duration::from_millis(400);
        })
        .unwrap();
    cloud
        .emulator
        .set_faults(FaultConfig {
            throttle: Some(Throttle {
                max_calls: 5,
                window_ms: 500,
            }),
            ..Default::default()
        })
        .unwrap();
    for _ in 0..15 {
        client
            .describe_eips(&DescribeEips::default())
            .await
            .unwrap();
    }
    let stats = client.stats();
    assert!(
        stats["DescribeEips"].retries > 0,
        "the quota must have been hit: {stats:?}"
    );
    assert_eq!(stats["DescribeEips"].errors, 0);
}

#[tokio::test]
async fn client_rate_limit_keeps_under_the_server_quota() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud
        .client_with(|c| {
            fast_retries(c);
            c.rate_limit.qps = 4;
            c.rate_limit.burst = 1;
        })
        .unwrap();
    // 5 calls per second allowed by the server; the client sends at most 4.
    cloud
        .emulator
        .set_faults(FaultConfig {
            throttle: Some(Throttle {
                max_calls: 5,
                window_ms: 1000,
            }),
            ..Default::default()
        })
        .unwrap();
    for _ in 0..9 {
        client
            .describe_jobs(&DescribeJobs::default())
            .await
            .unwrap();
    }
    assert_eq!(
        client.stats()["DescribeJobs"].retries,
        0,
        "the client limiter must prevent quota errors"
    );
}

#[tokio::test]
async fn clear_error_after_the_retry_deadline() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud
        .client_with(|c| {
            fast_retries(c);
            c.retry.max_elapsed = Duration::from_millis(600);
        })
        .unwrap();
    cloud
        .emulator
        .set_faults(errors("DescribeVolumes", 5100, None))
        .unwrap();
    let err = client
        .describe_volumes(&DescribeVolumes::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RetriesExhausted { .. }), "{err:?}");
    assert_eq!(err.code(), Some(5100));
    let text = err.to_string();
    assert!(text.contains("DescribeVolumes"), "{text}");
    assert!(client.stats()["DescribeVolumes"].retries >= 2);
    // Other actions are unaffected.
    client
        .describe_vxnets(&DescribeVxnets::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_name_the_resource() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client_with(fast_retries).unwrap();
    let err = client
        .attach_volumes(&AttachVolumes {
            volumes: vec!["vol-nosuch00".into()],
            instance: "i-nosuch00".into(),
        })
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("nosuch00"), "{err}");
    assert_eq!(client.stats()["AttachVolumes"].retries, 0);
    // Wrong state (1400) is permanent too.
    let out = client
        .create_volumes(&CreateVolumes {
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    client.wait_job(&out.job_id, None).await.unwrap();
    let vol = out.volumes[0].clone();
    let err = client
        .detach_volumes(&DetachVolumes {
            volumes: vec![vol.clone()],
            instance: "i-whatever".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err.code(), Some(1400) | Some(2100)), "{err:?}");
    assert_eq!(client.stats()["DetachVolumes"].retries, 0);
}

#[tokio::test]
async fn attach_limit_is_insufficient_resources() {
    let cloud = TestCloud::start_with(|c| c.attach_limit = 2).await.unwrap();
    let client = cloud.client_with(fast_retries).unwrap();
    let inst = client
        .describe_instances_all(&DescribeInstances::default())
        .await
        .unwrap()[0]
        .instance_id
        .clone();
    let out = client
        .create_volumes(&CreateVolumes {
            size: 10,
            count: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    client.wait_job(&out.job_id, None).await.unwrap();
    for v in &out.volumes[..2] {
        let j = client
            .attach_volumes(&AttachVolumes {
                volumes: vec![v.clone()],
                instance: inst.clone(),
            })
            .await
            .unwrap();
        client.wait_job(&j.job_id, None).await.unwrap();
    }
    let err = client
        .attach_volumes(&AttachVolumes {
            volumes: vec![out.volumes[2].clone()],
            instance: inst.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(5200), "{err:?}");
    assert!(err.to_string().contains(&inst), "{err}");
}

#[tokio::test]
async fn existing_hosts_are_adopted_as_instances() {
    use iaas_emulator::config::AdoptedHost;
    let host = |name: &str, ip: &str| AdoptedHost {
        name: name.into(),
        private_ip: ip.into(),
        instance_type: None,
    };
    let cloud = TestCloud::start_with(|c| {
        c.adopted_instances = vec![host("kind-control-plane", "172.30.1.200")];
        c.admin_enabled = true;
    })
    .await
    .unwrap();
    let client = cloud.client_with(fast_retries).unwrap();
    let find = |all: &[iaas_client::model::Instance], name: &str| {
        all.iter().find(|i| i.instance_name == name).cloned()
    };
    let all = client
        .describe_instances_all(&DescribeInstances::default())
        .await
        .unwrap();
    let cp = find(&all, "kind-control-plane").expect("adopted from config");
    assert!(cp.adopted && cp.status == "running", "{cp:?}");
    assert_eq!(cp.vxnets[0].private_ip, "172.30.1.200");
    assert!(
        !cp.vxnets[0].vxnet_id.is_empty(),
        "an address inside the vxnet joins it"
    );

    // In process, and again under the same name: same id, new address.
    let a = cloud
        .emulator
        .adopt(&host("worker-1", "10.9.8.7"))
        .await
        .unwrap();
    assert!(
        a.vxnets[0].vxnet_id.is_empty(),
        "an address outside every vxnet joins none"
    );
    let b = cloud
        .emulator
        .adopt(&host("worker-1", "10.9.8.8"))
        .await
        .unwrap();
    assert_eq!(a.instance_id, b.instance_id);
    let err = cloud
        .emulator
        .adopt(&host("worker-2", "not-an-ip"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("private_ip"), "{err}");

    // Through the admin endpoint.
    let url = format!("{}/admin/instances", cloud.emulator.endpoint());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let resp = http
        .post(&url)
        .body(r#"{"name":"worker-3","private_ip":"172.30.1.201","instance_type":"bare"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let all = client
        .describe_instances_all(&DescribeInstances::default())
        .await
        .unwrap();
    let w3 = find(&all, "worker-3").unwrap();
    assert_eq!((w3.instance_type.as_str(), w3.adopted), ("bare", true));
    assert_eq!(
        find(&all, "worker-1").unwrap().vxnets[0].private_ip,
        "10.9.8.8"
    );
    let bad = http
        .post(&url)
        .body(r#"{"name":"w","private_ip":"1.2.3.4","colour":"red"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn admin_endpoint_is_off_unless_enabled() {
    let cloud = TestCloud::start().await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/admin/faults"),
        ("GET", "/admin/stats"),
        ("POST", "/admin/instances"),
    ] {
        let url = format!("{}{path}", cloud.emulator.endpoint());
        let resp = http
            .request(method.parse().unwrap(), &url)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{method} {path}");
    }
}

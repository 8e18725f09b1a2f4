//! The client against a tiny scripted HTTP responder on loopback: signing,
//! envelope handling, retries, paging and job waiting, end to end over TCP.

mod common;

use std::time::Duration;

use common::{Responder, SECRET, fail, ok};
use iaas_client::actions::*;
use iaas_client::{Client, Config, Credentials, Error, HttpMethod};
use serde_json::{Value, json};

#[tokio::test]
async fn signed_post_and_get_with_common_params() {
    let r = Responder::start(|_, _| ok(json!({"total_count": 0, "volume_set": []}))).await;
    for method in [HttpMethod::Post, HttpMethod::Get] {
        let c = r.client(|cfg| cfg.http_method = method);
        let page = c
            .describe_volumes(&DescribeVolumes {
                volumes: vec!["vol-a".into(), "vol b/+".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page, Page::default());
    }
    let seen = r.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[1].method, "GET");
    for s in &seen {
        assert!(s.signature_ok, "{s:?}");
        let p = &s.params;
        assert_eq!(p["action"], "DescribeVolumes");
        assert_eq!(p["zone"], "test1");
        assert_eq!(p["access_key_id"], "AKIDTEST");
        assert_eq!(p["version"], "1");
        assert_eq!(p["signature_method"], "HmacSHA256");
        assert_eq!(p["signature_version"], "1");
        assert_eq!(p["volumes.2"], "vol b/+");
        let ts = &p["time_stamp"];
        assert!(
            ts.len() == 20 && ts.ends_with('Z') && &ts[10..11] == "T",
            "{ts}"
        );
        assert!(!p.contains_key("verbose"));
    }
}

#[tokio::test]
async fn transient_errors_are_retried_and_counted() {
    let r = Responder::start(|n, _| {
        if n < 2 {
            fail(5100, "server busy")
        } else {
            ok(json!({"job_id": "j-1", "volumes": ["vol-1"]}))
        }
    })
    .await;
    let c = r.client(|_| {});
    let out = c
        .create_volumes(&CreateVolumes {
            size: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.job_id, "j-1");
    assert_eq!(out.volumes, vec!["vol-1"]);
    assert_eq!(r.seen().len(), 3);
    assert!(r.seen().iter().all(|s| s.signature_ok));
    let stats = c.stats()["CreateVolumes"];
    assert_eq!((stats.calls, stats.errors, stats.retries), (1, 0, 2));

    let mut reg = prometheus_client::registry::Registry::default();
    c.register_metrics(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains(r#"iaas_client_retries_total{action="CreateVolumes"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn permanent_errors_are_not_retried() {
    let r = Responder::start(|_, _| {
        (
            404,
            json!({"ret_code": 2100, "message": "resource [vol-x] not found"}).to_string(),
        )
    })
    .await;
    let c = r.client(|_| {});
    let e = c
        .delete_volumes(&DeleteVolumes::new(["vol-x"]))
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(matches!(&e, Error::Api { code: 2100, .. }));
    assert_eq!(r.seen().len(), 1);
    assert_eq!(c.stats()["DeleteVolumes"].errors, 1);
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let r = Responder::start(|_, _| fail(2500, "api quota exceeded")).await;
    let c = r.client(|cfg| cfg.retry.max_elapsed = Duration::from_millis(300));
    let e = c
        .describe_volumes(&DescribeVolumes::default())
        .await
        .unwrap_err();
    match &e {
        Error::RetriesExhausted { attempts, last, .. } => {
            assert!(*attempts >= 2, "{e}");
            assert!(matches!(**last, Error::Api { code: 2500, .. }));
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    assert_eq!(e.code(), Some(2500));
    assert!(e.to_string().contains("retry deadline passed"), "{e}");
}

#[tokio::test]
async fn connection_refused_is_a_transport_error() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let creds = Credentials::new("AK", SECRET).unwrap();
    let mut cfg = Config::new(format!("http://{addr}"), "z", creds);
    cfg.retry.max_elapsed = Duration::ZERO;
    let c = Client::new(cfg).unwrap();
    let e = c.describe_jobs(&DescribeJobs::default()).await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e}");
    assert_eq!(e.metric_label(), "transport");
    assert!(!format!("{e} {e:?}").contains(SECRET));
    assert!(!format!("{c:?}").contains(SECRET));
}

#[tokio::test]
async fn describe_all_walks_every_page() {
    let r = Responder::start(|_, p| {
        let offset: usize = p.get("offset").map_or(0, |v| v.parse().unwrap());
        let limit: usize = p.get("limit").map_or(20, |v| v.parse().unwrap());
        let items: Vec<Value> = (offset..(offset + limit).min(250))
            .map(|i| json!({"volume_id": format!("vol-{i}")}))
            .collect();
        ok(json!({"total_count": 250, "volume_set": items}))
    })
    .await;
    let c = r.client(|_| {});
    let all = c
        .describe_volumes_all(&DescribeVolumes {
            limit: Some(7),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 250);
    assert_eq!(all[249].volume_id, "vol-249");
    let seen = r.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.params["limit"] == "100"));
    assert_eq!(seen[2].params["offset"], "200");
}

#[tokio::test]
async fn describe_all_stops_on_empty_page() {
    // A lying total_count must not loop forever.
    let r = Responder::start(|_, _| ok(json!({"total_count": 1000, "volume_set": []}))).await;
    let c = r.client(|_| {});
    assert!(
        c.describe_volumes_all(&DescribeVolumes::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(r.seen().len(), 1);
}

fn job(id: &str, status: &str) -> Value {
    json!({"job_id": id, "job_action": "AttachVolumes", "status": status,
           "error_code": if status == "failed" { 5200 } else { 0 },
           "error_message": if status == "failed" { "instance i-1 reached its limit of 2 volumes" } else { "" }})
}

#[tokio::test]
async fn wait_job_outcomes() {
    let r = Responder::start(|n, p| {
        let id = p["jobs.1"].clone();
        let status = match id.as_str() {
            "j-ok" if n < 2 => "working",
            "j-ok" => "successful",
            "j-bad" => "failed",
            _ => "pending",
        };
        ok(json!({"total_count": 1, "job_set": [job(&id, status)]}))
    })
    .await;
    let c = r.client(|_| {});
    let j = c.wait_job("j-ok", None).await.unwrap();
    assert_eq!(j.status, "successful");
    assert_eq!(r.seen().len(), 3);

    let e = c.wait_job("j-bad", None).await.unwrap_err();
    match &e {
        Error::JobFailed {
            job_id,
            code,
            message,
            ..
        } => {
            assert_eq!(job_id, "j-bad");
            assert_eq!(*code, 5200);
            assert!(message.contains("limit"));
        }
        other => panic!("expected JobFailed, got {other}"),
    }

    let e = c
        .wait_job("j-slow", Some(Duration::from_millis(60)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::JobTimeout { ref job_id, .. } if job_id == "j-slow"),
        "{e}"
    );
}

#[tokio::test]
async fn wait_jobs_polls_all_in_one_call_per_round() {
    let r = Responder::start(|n, p| {
        let ids: Vec<String> = (1..)
            .map_while(|i| p.get(&format!("jobs.{i}")).cloned())
            .collect();
        let set: Vec<Value> = ids
            .iter()
            .map(|id| {
                job(
                    id,
                    if n >= 1 || id == "j-a" {
                        "successful"
                    } else {
                        "working"
                    },
                )
            })
            .collect();
        ok(json!({"total_count": set.len(), "job_set": set}))
    })
    .await;
    let c = r.client(|_| {});
    let jobs = c.wait_jobs(&["j-a", "j-b", "j-c"], None).await.unwrap();
    assert_eq!(
        jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>(),
        vec!["j-a", "j-b", "j-c"]
    );
    let seen = r.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].params.contains_key("jobs.3"));
    // The second round asks only for the jobs still running.
    assert!(!seen[1].params.values().any(|v| v == "j-a"));
}

#[tokio::test]
async fn unknown_job_is_not_found() {
    let r = Responder::start(|_, _| ok(json!({"total_count": 0, "job_set": []}))).await;
    let c = r.client(|_| {});
    let e = c.wait_job("j-nope", None).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test]
async fn and_wait_waits_for_the_job() {
    let r = Responder::start(|_, p| match p["action"].as_str() {
        "AttachVolumes" => ok(json!({"job_id": "j-7"})),
        "DescribeJobs" => ok(json!({"total_count": 1, "job_set": [job("j-7", "successful")]})),
        other => fail(1100, &format!("unknown action {other}")),
    })
    .await;
    let c = r.client(|_| {});
    let out = c
        .attach_volumes_and_wait(&AttachVolumes {
            volumes: vec!["vol-1".into()],
            instance: "i-1".into(),
        })
        .await
        .unwrap();
    assert_eq!(out.job_id, "j-7");
    let actions: Vec<String> = r
        .seen()
        .iter()
        .map(|s| s.params["action"].clone())
        .collect();
    assert_eq!(actions, vec!["AttachVolumes", "DescribeJobs"]);
}

#[tokio::test]
async fn html_error_pages_are_status_errors() {
    let r = Responder::start(|n, _| {
        if n == 0 {
            (503, "<html>unavailable</html>".into())
        } else {
            ok(json!({"tag_id": "tag-1"}))
        }
    })
    .await;
    let c = r.client(|_| {});
    let out = c
        .create_tag(&CreateTag {
            tag_name: "k8s".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(out.tag_id, "tag-1");
    assert_eq!(r.seen().len(), 2);
}

#[tokio::test]
async fn reserved_params_are_rejected_before_sending() {
    let r = Responder::start(|_, _| ok(json!({}))).await;
    let c = r.client(|_| {});
    let e = c
        .call_params("DescribeVolumes", vec![("signature".into(), "x".into())])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Request(_)), "{e}");
    assert!(r.seen().is_empty());
}

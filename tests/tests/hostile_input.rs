//! The emulator against requests no well-behaved client sends: every one is
//! refused with the documented ret_code and a message naming what is wrong.

use iaas_client::codes;
use suite_tests::TestCloud;
use suite_tests::raw::{RawRequest, message, ret_code, send_encoded, time_stamp};
use time::{Duration, OffsetDateTime};

#[tokio::test]
async fn well_formed_request_succeeds_get_and_post() {
    let cloud = TestCloud::start().await.unwrap();
    let t = cloud.target();
    let (status, body) = RawRequest::new(&t, "DescribeInstances", &[])
        .send(&t)
        .await
        .unwrap();
    assert_eq!((status, ret_code(&body)), (200, 0), "{body}");
    assert_eq!(body["action"], "DescribeInstancesResponse");
    let mut post = RawRequest::new(&t, "DescribeVxnets", &[]);
    post.method = "POST";
    let (_, body) = post.send(&t).await.unwrap();
    assert_eq!(ret_code(&body), 0, "{body}");
}

#[tokio::test]
async fn bad_missing_and_foreign_signatures_are_1200() {
    let cloud = TestCloud::start().await.unwrap();
    let t = cloud.target();
    // Wrong secret.
    let mut r = RawRequest::new(&t, "DescribeVolumes", &[]);
    r.secret = Some("not-the-secret".into());
    let (_, body) = r.send(&t).await.unwrap();
    assert_eq!(ret_code(&body), codes::AUTH_FAILED as i64, "{body}");
    // Missing signature.
    let mut r = RawRequest::new(&t, "DescribeVolumes", &[]);
    r.signature = Some(String::new());
    let (_, body) = r.send(&t).await.unwrap();
    assert!(matches!(ret_code(&body), 1100 | 1200), "{body}");
    assert!(message(&body).contains("signature"), "{body}");
    // Unknown key.
    let r = RawRequest::new(&t, "DescribeVolumes", &[]).set("access_key_id", "NOSUCHKEY");
    let (_, body) = r.send(&t).await.unwrap();
    assert_eq!(ret_code(&body), codes::AUTH_FAILED as i64, "{body}");
    // A parameter changed after signing (tampering).
    let good = RawRequest::new(&t, "DescribeVolumes", &[("limit", "5")]).encode(&t);
    let tampered = good.replace("limit=5", "limit=50");
    let (_, body) = send_encoded(&t, "GET", &tampered).await.unwrap();
    assert_eq!(ret_code(&body), codes::AUTH_FAILED as i64, "{body}");
    // Signed for POST, sent as GET.
    let mut r = RawRequest::new(&t, "DescribeVolumes", &[]);
    r.method = "POST";
    let (_, body) = send_encoded(&t, "GET", &r.encode(&t)).await.unwrap();
    assert_eq!(ret_code(&body), codes::AUTH_FAILED as i64, "{body}");
}

#[tokio::test]
async fn stale_future_and_malformed_timestamps() {
    let cloud = TestCloud::start().await.unwrap();
    let t = cloud.target();
    let now = OffsetDateTime::now_utc();
    for at in [
        now - Duration::seconds(120),
        now + Duration::seconds(120),
        now - Duration::days(400),
    ] {
        let r = RawRequest::new(&t, "DescribeVolumes", &[]).set("time_stamp", &time_stamp(at));
        let (_, body) = r.send(&t).await.unwrap();
        assert_eq!(ret_code(&body), codes::EXPIRED as i64, "{at}: {body}");
    }
    // A replay of a captured request older than the window is refused too.
    let r = RawRequest::new(&t, "DescribeVolumes", &[])
        .set("time_stamp", &time_stamp(now - Duration::seconds(61)));
    let (_, body) = r.send(&t).await.unwrap();
    assert_eq!(ret_code(&body), codes::EXPIRED as i64, "{body}");
    let r = RawRequest::new(&t, "DescribeVolumes", &[]).set("time_stamp", "yesterday");
    let (_, body) = r.send(&t).await.unwrap();
    assert!(matches!(ret_code(&body), 1100 | 1300), "{body}");
    assert!(message(&body).contains("time_stamp"), "{body}");
}

#[tokio::test]
async fn missing_and_invalid_parameters_are_1100_naming_them() {
    let cloud = TestCloud::start().await.unwrap();
    let t = cloud.target();
    // (action, parameters, the field the message must name)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("CreateVolumes", &[("volume_name", "x")], "size"),
        ("CreateVolumes", &[("size", "ten")], "size"),
        ("AttachVolumes", &[("volumes.1", "vol-x")], "instance"),
        ("DescribeVolumes", &[("limit", "-1")], "limit"),
        ("DescribeVolumes", &[("volumes.0", "vol-x")], "volumes"),
        (
            "DescribeVolumes",
            &[("volumes.1", "a"), ("volumes.3", "b")],
            "volumes",
        ),
        (
            "AddLoadBalancerListeners",
            &[
                ("loadbalancer", "lb-x"),
                ("listeners.1.listener_port", "99999"),
                ("listeners.1.listener_protocol", "tcp"),
            ],
            "listeners.1.listener_port",
        ),
        ("CreateTag", &[], "tag_name"),
    ];
    for (action, params, field) in cases {
        let (_, body) = RawRequest::new(&t, action, params).send(&t).await.unwrap();
        assert_eq!(
            ret_code(&body),
            codes::MALFORMED as i64,
            "{action} {params:?}: {body}"
        );
        assert!(
            message(&body).contains(field),
            "{action}: message should name {field}: {body}"
        );
    }
    // Wrong zone and unknown action.
    let (_, body) = RawRequest::new(&t, "DescribeVolumes", &[])
        .set("zone", "elsewhere")
        .send(&t)
        .await
        .unwrap();
    assert_eq!(ret_code(&body), codes::MALFORMED as i64, "{body}");
    assert!(message(&body).contains("zone"), "{body}");
    let (_, body) = RawRequest::new(&t, "LaunchMissiles", &[])
        .send(&t)
        .await
        .unwrap();
    assert_eq!(ret_code(&body), codes::MALFORMED as i64, "{body}");
    assert!(message(&body).contains("LaunchMissiles"), "{body}");
    // Missing action altogether.
    let (_, body) = RawRequest::new(&t, "DescribeVolumes", &[])
        .remove("action")
        .send(&t)
        .await
        .unwrap();
    assert_eq!(ret_code(&body), codes::MALFORMED as i64, "{body}");
    assert!(message(&body).contains("action"), "{body}");
}

#[tokio::test]
async fn oversized_requests_are_refused_without_harm() {
    let cloud = TestCloud::start().await.unwrap();
    let t = cloud.target();
    let big = "x".repeat(2 * 1024 * 1024);
    let mut r = RawRequest::new(
        &t,
        "CreateTag",
        &[("tag_name", "big"), ("description", &big)],
    );
    r.method = "POST";
    let (status, body) = r.send(&t).await.unwrap();
    assert_eq!(status, 413, "{body}");
    assert_eq!(ret_code(&body), codes::MALFORMED as i64, "{body}");
    // Too many parameters.
    let many: Vec<(String, String)> = (1..=5000)
        .map(|i| (format!("volumes.{i}"), format!("vol-{i}")))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut r = RawRequest::new(&t, "DescribeVolumes", &refs);
    r.method = "POST";
    let (_, body) = r.send(&t).await.unwrap();
    assert_eq!(ret_code(&body), codes::MALFORMED as i64, "{body}");
    // The emulator is still healthy afterwards.
    let (_, body) = RawRequest::new(&t, "DescribeTags", &[])
        .send(&t)
        .await
        .unwrap();
    assert_eq!(ret_code(&body), 0, "{body}");
    assert_eq!(
        body["total_count"], 0,
        "the refused CreateTag must not have created anything: {body}"
    );
}

#[tokio::test]
async fn garbage_bodies_never_crash_the_server() {
    let cloud = TestCloud::start().await.unwrap();
    let t = cloud.target();
    for garbage in [
        "",
        "&&&",
        "=",
        "%",
        "%zz=%",
        "a=%FF%FE",
        "action=%00",
        "\u{0}\u{1}",
    ] {
        let (_, body) = send_encoded(&t, "POST", garbage).await.unwrap();
        assert_ne!(ret_code(&body), 0, "{garbage:?}: {body}");
    }
    let (_, body) = RawRequest::new(&t, "DescribeTags", &[])
        .send(&t)
        .await
        .unwrap();
    assert_eq!(ret_code(&body), 0, "{body}");
}

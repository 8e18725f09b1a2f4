//! The reconciler against the in-process emulator over HTTP: creation,
//! idempotence (zero writes), updates, deletion without leaks, and the
//! failure cases peers' users hit.

mod common;

use common::*;
use iaas_client::actions::*;
use lb_controller::Error;
use lb_controller::model::*;

#[tokio::test]
async fn ensure_creates_everything_and_second_ensure_writes_nothing() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let d = l4("web", &inst);
    let st = r.ensure(&d).await.unwrap();
    assert!(st.operations > 0);
    assert_eq!(st.addresses.len(), 1, "{st:?}");
    assert!(!st.reused);

    let c = &cloud.client;
    let lbs = c
        .describe_load_balancers_all(&DescribeLoadBalancers {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lbs.len(), 1);
    let lb = &lbs[0];
    assert_eq!(lb.loadbalancer_id, st.lb_id);
    assert_eq!(lb.loadbalancer_name, d.owner.lb_name());
    assert_eq!(lb.is_applied, 1);
    assert_eq!(lb.status, "active");
    assert_eq!(lb.tags.len(), 1);
    assert_eq!(lb.tags[0].tag_name, d.owner.tag_name());
    assert_eq!(lb.listeners.len(), 2);
    for l in &lb.listeners {
        assert_eq!(l.backends.len(), inst.len(), "{l:?}");
    }
    assert_eq!(Some(lb.security_group_id.clone()), st.security_group_id);
    let rules = c
        .describe_security_group_rules_all(&DescribeSecurityGroupRules {
            security_group: Some(lb.security_group_id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut got: Vec<(String, String)> = rules
        .iter()
        .map(|r| (r.protocol.clone(), r.val3.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("tcp".to_string(), "10.0.0.0/8".to_string()),
            ("udp".to_string(), "10.0.0.0/8".to_string())
        ]
    );
    let eips = c.describe_eips_all(&DescribeEips::default()).await.unwrap();
    assert_eq!(eips.len(), 1);
    assert_eq!(eips[0].eip_addr, st.addresses[0]);
    assert_eq!(eips[0].tags.len(), 1);

    // The second ensure is Describe calls only.
    cloud.emu.reset_stats();
    let st2 = r.ensure(&d).await.unwrap();
    assert_eq!(st2.operations, 0);
    assert_eq!(st2.lb_id, st.lb_id);
    assert_eq!(st2.addresses, st.addresses);
    assert!(cloud.writes().is_empty(), "writes: {:?}", cloud.writes());
    assert!(cloud.describes() <= 7, "describes: {:?}", cloud.emu.stats());

    // And a fresh reconciler (a restarted controller) agrees.
    cloud.emu.reset_stats();
    let st3 = cloud.reconciler().ensure(&d).await.unwrap();
    assert_eq!(st3.lb_id, st.lb_id);
    assert!(cloud.writes().is_empty(), "writes: {:?}", cloud.writes());

    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
}

/// Issue 9: the Describe calls of a creation. The ownership tag is created
/// before anything else, so a new owner needs no name searches; an update
/// that keeps the LB and its addresses does not describe the LB again.
#[tokio::test]
async fn creation_and_update_make_no_redundant_describes() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let mut d = l4("calls", &inst);
    let describe = |a: &str| {
        cloud
            .emu
            .stats()
            .get(a)
            .map(|s| s.calls)
            .unwrap_or_default()
    };
    cloud.emu.reset_stats();
    let st = r.ensure(&d).await.unwrap();
    assert!(st.operations > 0 && !st.addresses.is_empty());
    // The tag lookup, then the created LB once for its addresses.
    assert_eq!(describe("DescribeTags"), 1, "{:?}", cloud.emu.stats());
    assert_eq!(
        describe("DescribeLoadBalancers"),
        1,
        "{:?}",
        cloud.emu.stats()
    );
    for a in [
        "DescribeSecurityGroups",
        "DescribeEips",
        "DescribeServerCertificates",
    ] {
        assert_eq!(describe(a), 0, "{a}: {:?}", cloud.emu.stats());
    }

    // A new backend: the observation's LB (same id, same EIP) gives the status.
    d.listeners[0]
        .default_backends
        .push(backend(&inst[0], 30081));
    cloud.emu.reset_stats();
    let st2 = r.ensure(&d).await.unwrap();
    assert!(st2.operations > 0);
    assert_eq!(
        (st2.lb_id.as_str(), &st2.addresses),
        (st.lb_id.as_str(), &st.addresses)
    );
    // Observation only: by tag, never by id afterwards.
    assert_eq!(
        describe("DescribeLoadBalancers"),
        1,
        "{:?}",
        cloud.emu.stats()
    );
    check_idle(&cloud, &r, &d, "new backend").await;

    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
}

async fn check_idle(
    cloud: &Cloud,
    r: &lb_controller::Reconciler,
    d: &DesiredLb,
    label: &str,
) -> lb_controller::LbStatus {
    cloud.emu.reset_stats();
    let st = r.ensure(d).await.unwrap();
    assert_eq!(st.operations, 0, "{label}: not converged");
    assert!(cloud.writes().is_empty(), "{label}: {:?}", cloud.writes());
    st
}

#[tokio::test]
async fn update_paths_converge_and_then_write_nothing() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let mut d = l4("upd", &inst);
    r.ensure(&d).await.unwrap();

    // Add a port.
    d.listeners.push(DesiredListener::l4(
        8080,
        Protocol::Tcp,
        vec![backend(&inst[0], 31000)],
    ));
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    let w = cloud.writes();
    assert_eq!(w.get("AddLoadBalancerListeners"), Some(&1), "{w:?}");
    assert_eq!(w.get("UpdateLoadBalancers"), Some(&1), "{w:?}");
    assert!(!w.contains_key("DeleteLoadBalancerListeners"), "{w:?}");
    check_idle(&cloud, &r, &d, "add port").await;

    // Change a weight: modified in place.
    d.listeners[0].default_backends[0].weight = 60;
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    let w = cloud.writes();
    assert_eq!(
        w.get("ModifyLoadBalancerBackendAttributes"),
        Some(&1),
        "{w:?}"
    );
    assert!(!w.contains_key("AddLoadBalancerBackends"), "{w:?}");
    check_idle(&cloud, &r, &d, "weight").await;

    // Change the protocol of a port: delete + add.
    d.listeners[2].protocol = Protocol::Http;
    d.listeners[2].forwardfor = true;
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    let w = cloud.writes();
    assert_eq!(w.get("DeleteLoadBalancerListeners"), Some(&1), "{w:?}");
    assert_eq!(w.get("AddLoadBalancerListeners"), Some(&1), "{w:?}");
    check_idle(&cloud, &r, &d, "protocol").await;

    // Attributes only: modified in place.
    d.listeners[0].balance_mode = BalanceMode::Source;
    d.listeners[0].health_check = Some(HealthCheck {
        method: HealthCheckMethod::Http {
            path: "/healthz".into(),
        },
        timing: HealthCheckTiming {
            interval_secs: 3,
            timeout_secs: 2,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        },
    });
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    let w = cloud.writes();
    assert_eq!(
        w.get("ModifyLoadBalancerListenerAttributes"),
        Some(&1),
        "{w:?}"
    );
    check_idle(&cloud, &r, &d, "attributes").await;

    // Source ranges: rules replaced and applied.
    d.source_ranges = vec!["192.168.0.0/16".into(), "172.16.0.1".into()];
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    let w = cloud.writes();
    assert_eq!(w.get("ApplySecurityGroup"), Some(&1), "{w:?}");
    check_idle(&cloud, &r, &d, "source ranges").await;

    // Switch to a user's EIP: ours is released, theirs is kept.
    let user = cloud
        .client
        .allocate_eips(&AllocateEips {
            bandwidth: 5,
            count: Some(1),
            eip_name: Some("users-eip".into()),
        })
        .await
        .unwrap()
        .eips[0]
        .clone();
    d.network = LbNetwork::Public {
        eip: EipSource::Existing(vec![user.clone()]),
    };
    let st = r.ensure(&d).await.unwrap();
    let eips = cloud
        .client
        .describe_eips_all(&DescribeEips::default())
        .await
        .unwrap();
    assert_eq!(eips.len(), 1, "{eips:?}");
    assert_eq!(eips[0].eip_id, user);
    assert_eq!(st.addresses, vec![eips[0].eip_addr.clone()]);
    check_idle(&cloud, &r, &d, "user EIP").await;

    // By address works too and is a no-op for the same EIP.
    d.network = LbNetwork::Public {
        eip: EipSource::ByAddress(eips[0].eip_addr.parse().unwrap()),
    };
    check_idle(&cloud, &r, &d, "by address").await;

    // Back to an allocated one.
    d.network = LbNetwork::Public {
        eip: EipSource::Allocate { bandwidth: 10 },
    };
    r.ensure(&d).await.unwrap();
    check_idle(&cloud, &r, &d, "allocate again").await;

    // Remove a listener.
    d.listeners.remove(1);
    r.ensure(&d).await.unwrap();
    check_idle(&cloud, &r, &d, "remove listener").await;

    r.delete(&d.owner).await.unwrap();
    // The user's EIP survives, free again.
    let eips = cloud
        .client
        .describe_eips_all(&DescribeEips::default())
        .await
        .unwrap();
    assert_eq!(eips.len(), 1);
    assert_eq!(eips[0].eip_id, user);
    assert_eq!(eips[0].status, "available");
    cloud.assert_clean(&[]).await;
}

#[tokio::test]
async fn l7_rules_certificates_rotation_and_cleanup() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let mut d = l7("ing", &inst, "A");
    r.ensure(&d).await.unwrap();
    let c = &cloud.client;
    let certs = c
        .describe_server_certificates_all(&DescribeServerCertificates::default())
        .await
        .unwrap();
    assert_eq!(certs.len(), 1);
    let old = certs[0].server_certificate_id.clone();
    let policies = c
        .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(policies.len(), 2, "{policies:?}");
    let lb = &c
        .describe_load_balancers_all(&DescribeLoadBalancers {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap()[0];
    let https = lb
        .listeners
        .iter()
        .find(|l| l.listener_protocol == "https")
        .unwrap();
    assert_eq!(https.server_certificate_id, vec![old.clone()]);
    assert_eq!(https.backends.len(), 3);
    assert_eq!(
        https
            .backends
            .iter()
            .filter(|b| !b.loadbalancer_policy_id.is_empty())
            .count(),
        2
    );

    cloud.emu.reset_stats();
    assert_eq!(r.ensure(&d).await.unwrap().operations, 0);
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());

    // Rotate: new certificate bound, old one deleted.
    d.listeners[1].certificates = vec![cert("B")];
    r.ensure(&d).await.unwrap();
    let certs = c
        .describe_server_certificates_all(&DescribeServerCertificates::default())
        .await
        .unwrap();
    assert_eq!(certs.len(), 1);
    assert_ne!(certs[0].server_certificate_id, old);
    cloud.emu.reset_stats();
    assert_eq!(r.ensure(&d).await.unwrap().operations, 0);

    // Change a path everywhere: one new policy, the old one deleted.
    for l in &mut d.listeners {
        l.rules[0].path_prefix = Some("/v2".into());
    }
    r.ensure(&d).await.unwrap();
    let policies = c
        .describe_load_balancer_policies_all(&DescribeLoadBalancerPolicies {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(policies.len(), 2, "{policies:?}");
    assert!(
        policies
            .iter()
            .any(|p| p.rules.iter().any(|r| r.val == "/v2"))
    );
    cloud.emu.reset_stats();
    assert_eq!(r.ensure(&d).await.unwrap().operations, 0);

    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
    // Deleting again is a no-op.
    r.delete(&d.owner).await.unwrap();
}

#[tokio::test]
async fn internal_lb_gets_a_private_address() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let vxnet = cloud.vxnet().await;
    let r = cloud.reconciler();
    let mut d = l4("internal", &inst);
    d.network = LbNetwork::Internal {
        vxnet: vxnet.clone(),
        private_ip: None,
    };
    let st = r.ensure(&d).await.unwrap();
    assert_eq!(st.addresses.len(), 1);
    assert!(
        cloud
            .client
            .describe_eips_all(&DescribeEips::default())
            .await
            .unwrap()
            .is_empty()
    );
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());
    // Switching to public re-creates the LB with an EIP.
    d.network = LbNetwork::Public {
        eip: EipSource::Allocate { bandwidth: 1 },
    };
    let st2 = r.ensure(&d).await.unwrap();
    assert_ne!(st2.lb_id, st.lb_id);
    cloud.emu.reset_stats();
    r.ensure(&d).await.unwrap();
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
}

#[tokio::test]
async fn reuse_existing_lb_only_touches_our_listeners() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let c = &cloud.client;
    let eip = c
        .allocate_eips(&AllocateEips {
            bandwidth: 1,
            count: Some(1),
            eip_name: Some("user".into()),
        })
        .await
        .unwrap()
        .eips[0]
        .clone();
    let user_lb = c
        .create_load_balancer_and_wait(&CreateLoadBalancer {
            eips: vec![eip.clone()],
            loadbalancer_name: Some("users-lb".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .loadbalancer_id;
    c.add_load_balancer_listeners(&AddLoadBalancerListeners {
        loadbalancer: user_lb.clone(),
        listeners: vec![ListenerSpec {
            listener_port: 9000,
            listener_protocol: "tcp".into(),
            loadbalancer_listener_name: Some("theirs".into()),
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    c.update_load_balancers_and_wait(&UpdateLoadBalancers::new([user_lb.clone()]))
        .await
        .unwrap();

    let r = cloud.reconciler();
    let mut d = l4("reuser", &inst);
    d.source_ranges.clear();
    d.reuse_existing = Some(user_lb.clone());
    let st = r.ensure(&d).await.unwrap();
    assert!(st.reused);
    assert_eq!(st.lb_id, user_lb);
    assert_eq!(st.security_group_id, None);
    cloud.emu.reset_stats();
    assert_eq!(r.ensure(&d).await.unwrap().operations, 0);
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());

    // A port the user's listener holds is a conflict, not a takeover.
    let mut clash = d.clone();
    clash.listeners[0].port = 9000;
    let e = r.ensure(&clash).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert!(!e.is_retryable());

    r.delete(&d.owner).await.unwrap();
    let lbs = c
        .describe_load_balancers_all(&DescribeLoadBalancers {
            verbose: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(lbs.len(), 1, "the user's LB stays");
    assert_eq!(lbs[0].listeners.len(), 1);
    assert_eq!(lbs[0].listeners[0].loadbalancer_listener_name, "theirs");
    assert!(lbs[0].tags.is_empty());
    assert_eq!(lbs[0].eips.len(), 1, "the user's EIP stays bound");
    let tags = c.describe_tags_all(&DescribeTags::default()).await.unwrap();
    assert!(tags.is_empty(), "{tags:?}");

    // A reused id that does not exist is a clear, permanent error.
    let mut missing = d.clone();
    missing.reuse_existing = Some("lb-doesnotexist".into());
    let e = r.ensure(&missing).await.unwrap_err();
    assert!(matches!(e, Error::ReferenceNotFound { .. }), "{e}");
    assert!(e.to_string().contains("reuse_existing"), "{e}");
    r.delete(&d.owner).await.unwrap();
}

#[tokio::test]
async fn invalid_model_is_rejected_before_any_call() {
    let cloud = Cloud::start().await;
    let r = cloud.reconciler();
    let mut d = l4("bad", &["i-1".to_string()]);
    d.listeners[0].port = 0;
    cloud.emu.reset_stats();
    let e = r.ensure(&d).await.unwrap_err();
    assert_eq!(e.metric_label(), "invalid_spec");
    assert!(e.to_string().contains("listeners[0].port"), "{e}");
    let mut d = l4("bad", &["i-1".to_string()]);
    d.owner.cluster_id = "other".into();
    let e = r.ensure(&d).await.unwrap_err();
    assert!(e.to_string().contains("owner.cluster_id"), "{e}");
    assert_eq!(cloud.total_calls(), 0);
}

#[tokio::test]
async fn idle_resync_of_many_lbs_is_a_few_describes() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let all: Vec<DesiredLb> = (0..12).map(|i| l4(&format!("svc{i}"), &inst)).collect();
    for res in r.ensure_many(&all).await {
        res.unwrap();
    }
    cloud.emu.reset_stats();
    let results = r.ensure_many(&all).await;
    for res in &results {
        assert_eq!(res.as_ref().unwrap().operations, 0);
    }
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());
    // Tags, LBs, SGs, rules, EIPs, certificates: one call each.
    assert!(cloud.describes() <= 7, "{:?}", cloud.emu.stats());
    for d in &all {
        r.delete(&d.owner).await.unwrap();
    }
    cloud.assert_clean(&[]).await;
}

#[tokio::test]
async fn transient_errors_are_retried_and_failed_jobs_converge() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let d = l4("faulty", &inst);
    // Server busy on every action a few times: the client retries.
    cloud
        .emu
        .set_faults(iaas_emulator::FaultConfig {
            errors: vec![iaas_emulator::faults::ErrorFault {
                action: "*".into(),
                code: 5100,
                rate: 1.0,
                remaining: Some(4),
                message: None,
            }],
            ..Default::default()
        })
        .unwrap();
    r.ensure(&d).await.unwrap();
    cloud.emu.clear_faults();
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;

    // The create job fails: the error is retryable and the next ensure
    // converges. (Internal: the emulator's rollback of a failed public
    // create leaves its EIP "associating" forever, an emulator bug.)
    let mut internal = d.clone();
    internal.network = LbNetwork::Internal {
        vxnet: cloud.vxnet().await,
        private_ip: None,
    };
    cloud
        .emu
        .set_faults(iaas_emulator::FaultConfig {
            job_failures: vec![iaas_emulator::faults::JobFault {
                action: "CreateLoadBalancer".into(),
                rate: 1.0,
                remaining: Some(1),
            }],
            ..Default::default()
        })
        .unwrap();
    let e = r.ensure(&internal).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.metric_label(), "job_failed");
    cloud.emu.clear_faults();
    r.ensure(&internal).await.unwrap();
    cloud.emu.reset_stats();
    r.ensure(&internal).await.unwrap();
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;

    // The EIP association of a create fails after the EIP was allocated:
    // the next ensure reuses the tagged EIP instead of allocating another.
    cloud
        .emu
        .set_faults(iaas_emulator::FaultConfig {
            errors: vec![iaas_emulator::faults::ErrorFault {
                action: "CreateLoadBalancer".into(),
                code: 1100,
                rate: 1.0,
                remaining: Some(1),
                message: None,
            }],
            ..Default::default()
        })
        .unwrap();
    assert!(r.ensure(&d).await.is_err());
    cloud.emu.clear_faults();
    r.ensure(&d).await.unwrap();
    let eips = cloud
        .client
        .describe_eips_all(&DescribeEips::default())
        .await
        .unwrap();
    assert_eq!(eips.len(), 1, "{eips:?}");

    // An update job fails: retryable, then converges.
    let mut d2 = d.clone();
    d2.listeners[0].default_backends[0].weight = 9;
    cloud
        .emu
        .set_faults(iaas_emulator::FaultConfig {
            job_failures: vec![iaas_emulator::faults::JobFault {
                action: "UpdateLoadBalancers".into(),
                rate: 1.0,
                remaining: Some(1),
            }],
            ..Default::default()
        })
        .unwrap();
    assert!(r.ensure(&d2).await.unwrap_err().is_retryable());
    cloud.emu.clear_faults();
    r.ensure(&d2).await.unwrap();
    cloud.emu.reset_stats();
    r.ensure(&d2).await.unwrap();
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
}

//! The failures peers' users report (FEATURES.md), and crash safety: a
//! reconcile killed after any number of calls is finished by a fresh one
//! with nothing leaked.

mod common;

use std::time::Duration;

use common::*;
use iaas_client::actions::*;
use iaas_emulator::FaultConfig;
use iaas_emulator::faults::{LatencyRange, StuckFault};
use lb_controller::model::DesiredLb;
use lb_controller::{Error, Reconciler, ReconcilerOptions};

async fn only_lb(cloud: &Cloud) -> String {
    let lbs = cloud
        .client
        .describe_load_balancers_all(&DescribeLoadBalancers::default())
        .await
        .unwrap();
    assert_eq!(lbs.len(), 1, "{lbs:?}");
    lbs[0].loadbalancer_id.clone()
}

/// openstack #1912/#1913: the Service is stuck deleting when its LB is already gone.
#[tokio::test]
async fn delete_when_lb_already_gone() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let d = l7("gone", &inst, "A");
    r.ensure(&d).await.unwrap();
    let lb = only_lb(&cloud).await;
    cloud
        .client
        .delete_load_balancers_and_wait(&DeleteLoadBalancers::new([lb]))
        .await
        .unwrap();
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
    // Nothing at all (never created, or deleted twice) is fine too.
    r.delete(&owner("never-created")).await.unwrap();
    r.delete(&d.owner).await.unwrap();
}

/// openstack #2037: an LB stuck in a transition; the delete waits with a
/// bound, reports a retryable Busy, and succeeds once the LB settles.
#[tokio::test]
async fn delete_waits_for_stuck_lb_then_succeeds() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let d = l4("stuck", &inst);
    r.ensure(&d).await.unwrap();
    let lb = only_lb(&cloud).await;

    cloud
        .emu
        .set_faults(FaultConfig {
            stuck: vec![StuckFault {
                action: "UpdateLoadBalancers".into(),
                remaining: None,
            }],
            ..Default::default()
        })
        .unwrap();
    cloud
        .client
        .update_load_balancers(&UpdateLoadBalancers::new([lb.clone()]))
        .await
        .unwrap();
    let impatient =
        Reconciler::new(client_for(&cloud.emu), CLUSTER).with_options(ReconcilerOptions {
            transition_timeout: Duration::from_millis(300),
            job_timeout: Some(Duration::from_millis(300)),
        });
    let e = impatient.delete(&d.owner).await.unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains(&lb), "{e}");

    // The delete job itself sticks: the wait times out (retryable) and the
    // next delete waits for the deletion already under way.
    cloud
        .emu
        .set_faults(FaultConfig {
            stuck: vec![StuckFault {
                action: "DeleteLoadBalancers".into(),
                remaining: None,
            }],
            ..Default::default()
        })
        .unwrap();
    let e = impatient.delete(&d.owner).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    cloud.emu.clear_faults();
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
}

/// openstack #2751: a stale LB id (the LB was deleted behind our back) must
/// not break re-creation; ids come from the tag, never from memory.
#[tokio::test]
async fn stale_lb_is_recreated() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let d = l4("stale", &inst);
    let first = r.ensure(&d).await.unwrap();
    cloud
        .client
        .delete_load_balancers_and_wait(&DeleteLoadBalancers::new([first.lb_id.clone()]))
        .await
        .unwrap();
    let second = r.ensure(&d).await.unwrap();
    assert_ne!(second.lb_id, first.lb_id);
    // The EIP we allocated was free again and is reused: same address.
    assert_eq!(second.addresses, first.addresses);
    cloud.emu.reset_stats();
    assert_eq!(r.ensure(&d).await.unwrap().operations, 0);
    assert!(cloud.writes().is_empty(), "{:?}", cloud.writes());
    r.delete(&d.owner).await.unwrap();
    cloud.assert_clean(&[]).await;
}

/// openstack #1636/#264: deleting in the wrong order is refused with 5400;
/// the reconciler's order never is.
#[tokio::test]
async fn wrong_delete_order_is_5400_ours_is_not() {
    let cloud = Cloud::start().await;
    let inst = cloud.instances().await;
    let r = cloud.reconciler();
    let d = l7("order", &inst, "A");
    let st = r.ensure(&d).await.unwrap();
    let sg = st.security_group_id.clone().unwrap();
    let e = cloud
        .client
        .delete_security_groups(&DeleteSecurityGroups::new([sg]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(5400), "{e}");
    let certs = cloud
        .client
        .describe_server_certificates_all(&DescribeServerCertificates::default())
        .await
        .unwrap();
    let e = cloud
        .client
        .delete_server_certificates(&DeleteServerCertificates::new([certs[0]
            .server_certificate_id
            .clone()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(5400), "{e}");
    cloud.emu.reset_stats();
    r.delete(&d.owner).await.unwrap();
    let errors: u64 = cloud.emu.stats().values().map(|s| s.errors).sum();
    assert_eq!(errors, 0, "{:?}", cloud.emu.stats());
    cloud.assert_clean(&[]).await;
}

/// Runs `work` and aborts it once the emulator has received `after` more calls.
async fn crash_after<F>(cloud: &Cloud, after: u64, work: F) -> bool
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let base = cloud.total_calls();
    let task = tokio::spawn(work);
    loop {
        if task.is_finished() {
            return task.await.is_ok();
        }
        if cloud.total_calls() >= base + after {
            task.abort();
            let _ = task.await;
            return false;
        }
        tokio::time::sleep(Duration::from_micros(300)).await;
    }
}

async fn full_calls(cloud: &Cloud, d: &DesiredLb) -> (u64, u64) {
    let r = cloud.reconciler();
    let base = cloud.total_calls();
    r.ensure(d).await.unwrap();
    let ensure = cloud.total_calls() - base;
    let base = cloud.total_calls();
    r.delete(&d.owner).await.unwrap();
    let delete = cloud.total_calls() - base;
    cloud.assert_clean(&[]).await;
    (ensure, delete)
}

/// Kills `ensure` after every possible number of calls; a fresh reconciler
/// then converges (and a further ensure writes nothing), and a delete leaves
/// nothing behind. Then the same for `delete`.
async fn crash_matrix(cloud: &Cloud, make: impl Fn(usize) -> DesiredLb) {
    let (ensure_calls, delete_calls) = full_calls(cloud, &make(1000)).await;
    assert!(ensure_calls > 5 && delete_calls > 3);
    let mut crashed = 0;
    for n in 1..ensure_calls {
        let d = make(n as usize);
        let r = cloud.reconciler();
        let d2 = d.clone();
        let finished = crash_after(cloud, n, async move {
            let _ = r.ensure(&d2).await;
        })
        .await;
        crashed += usize::from(!finished);
        let fresh = cloud.reconciler();
        fresh
            .ensure(&d)
            .await
            .unwrap_or_else(|e| panic!("ensure after a crash at call {n}: {e}"));
        cloud.emu.reset_stats();
        let st = fresh.ensure(&d).await.unwrap();
        assert_eq!(
            st.operations, 0,
            "crash at call {n} (finished: {finished}): not converged"
        );
        assert!(
            cloud.writes().is_empty(),
            "crash at call {n}: {:?}",
            cloud.writes()
        );
        fresh
            .delete(&d.owner)
            .await
            .unwrap_or_else(|e| panic!("delete after a crash at call {n}: {e}"));
        cloud.assert_clean(&[]).await;
    }
    // Most runs must really have been cut short for this to prove anything.
    assert!(
        crashed * 2 >= ensure_calls as usize,
        "only {crashed} of {ensure_calls} ensure runs crashed"
    );
    for n in 1..delete_calls {
        let d = make(10_000 + n as usize);
        let r = cloud.reconciler();
        r.ensure(&d).await.unwrap();
        let owner = d.owner.clone();
        crash_after(cloud, n, async move {
            let _ = r.delete(&owner).await;
        })
        .await;
        cloud
            .reconciler()
            .delete(&d.owner)
            .await
            .unwrap_or_else(|e| panic!("delete after a crash at call {n}: {e}"));
        cloud.assert_clean(&[]).await;
    }
}

#[tokio::test]
async fn crash_at_any_call_of_l4_ensure_or_delete_leaks_nothing() {
    let cloud = Cloud::start().await;
    cloud
        .emu
        .set_faults(FaultConfig {
            latency_ms: Some(LatencyRange { min: 2, max: 2 }),
            ..Default::default()
        })
        .unwrap();
    let inst = cloud.instances().await;
    crash_matrix(&cloud, |i| l4(&format!("crash{i}"), &inst)).await;
}

#[tokio::test]
async fn crash_at_any_call_of_l7_ensure_or_delete_leaks_nothing() {
    let cloud = Cloud::start().await;
    cloud
        .emu
        .set_faults(FaultConfig {
            latency_ms: Some(LatencyRange { min: 2, max: 2 }),
            ..Default::default()
        })
        .unwrap();
    let inst = cloud.instances().await;
    crash_matrix(&cloud, |i| l7(&format!("crash{i}"), &inst, "A")).await;
}

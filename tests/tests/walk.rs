//! The main job's walk, run as a test so a change that breaks it fails CI.

use suite_tests::TestCloud;
use suite_tests::walk::Walk;

#[tokio::test]
async fn iaas_walk_passes_and_leaks_nothing() {
    let cloud = TestCloud::start().await.unwrap();
    let client = cloud.client().unwrap();
    let counter = client.clone();
    let mut walk = Walk::new(move || counter.stats().values().map(|s| s.calls).sum());
    let ok = suite_tests::iaas_walk::run(&mut walk, &client).await;
    let summary = walk.summary();
    assert!(ok, "{summary}");
    assert!(
        suite_tests::iaas_walk::leftovers(&client)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The whole main job as the README runs it (the `walk` binary with every
/// data plane: loop-device disks through the CSI driver, pods on namespaces
/// through the CNI plugin, real L4/L7 proxies). Needs root, as CI has.
#[test]
fn full_walk_with_data_planes() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIP: full_walk_with_data_planes needs root (loop devices, namespaces)");
        return;
    }
    let walk =
        suite_tests::cni_walk::sibling_binary("walk").expect("walk binary built with the tests");
    for bin in ["csi-driver", "cloudsuite-cni"] {
        suite_tests::cni_walk::sibling_binary(bin).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let out = std::process::Command::new(walk).output().expect("run walk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walk failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed, 0 skipped"), "{stdout}");
}

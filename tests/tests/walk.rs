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
    assert!(suite_tests::iaas_walk::leftovers(&client).await.unwrap().is_empty());
}

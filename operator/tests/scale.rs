//! Fifty InferenceServices applied at once converge to Ready; prints the
//! time it took and the API writes per object (the figure the issue asks
//! for), and bounds the writes so a regression to write loops fails.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams};
use serde_json::json;
use steward_e2e::testing::eventually;
use steward_operator::crd::InferenceService;
use support::{apply, env, manifest, ready_and_current, Operator};

const COUNT: usize = 50;

#[tokio::test]
async fn fifty_inference_services_applied_at_once_converge() {
    let env = env("op-scale").await;
    let op = Operator::start(&env);
    let started = Instant::now();
    let applies = (0..COUNT).map(|i| {
        let obj = manifest(&env, &format!("svc-{i:02}"), 1, json!({}));
        let env = &env;
        async move { apply(env, &obj).await }
    });
    for r in futures::future::join_all(applies).await {
        r.expect("apply");
    }
    let api: Api<InferenceService> = Api::namespaced(env.client.clone(), &env.ns);
    let converged = eventually(Duration::from_secs(240), || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let ready = list.items.iter().filter(|o| ready_and_current(o)).count();
        (ready == COUNT).then_some(())
    })
    .await;
    let took = started.elapsed();
    let ready = api
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().filter(|o| ready_and_current(o)).count())
        .unwrap_or(0);
    assert!(
        converged.is_ok(),
        "only {ready}/{COUNT} Ready after {took:?}"
    );
    // Let trailing status/event writes land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = op.metrics.writes();
    let per_object = writes as f64 / COUNT as f64;
    eprintln!(
        "steward-operator: {COUNT} InferenceServices converged in {:.1}s with {writes} API writes ({per_object:.1} per object, events included); {} reconcile passes",
        took.as_secs_f64(),
        op.metrics.reconciles()
    );
    assert!(per_object <= 12.0, "{per_object:.1} writes per object");
    op.stop().await;
}

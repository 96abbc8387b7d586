//! The whole controller loop (reflectors, watch mappings, kube's scheduler, the reconciler)
//! against the simulated API server of `tests/sim`: from cold to every policy Ready with
//! exactly the writes a policy needs, and a full resync that writes nothing. The same
//! simulation at 1,000 policies is `make bench`'s controller scale run.

mod sim;

#[tokio::test]
async fn the_loop_converges_with_the_minimum_writes_and_a_resync_writes_nothing() {
    let r = sim::scale_run(25).await;
    assert_eq!(r["converged"], true, "{r}");
    assert_eq!(r["ready"], 25, "{r}");
    assert_eq!(r["writes"], r["minimum_writes"], "{r}");
    assert_eq!(r["minimum_writes"], 25 * 14);
    assert_eq!(r["refused_writes"], 0, "{r}");
    assert_eq!(r["resync_completed"], true, "{r}");
    assert_eq!(r["resync_writes"], 0, "{r}");
    assert_eq!(r["core_planned_writes"], 0, "the converged cache plans no write: {r}");
    assert_eq!(r["writes_by_kind"]["Deployment/apply"], 125, "{r}");
    assert_eq!(r["writes_by_kind"]["Service/apply"], 125, "{r}");
    assert_eq!(r["writes_by_kind"]["AuthPolicy/status"], 50, "{r}");
}

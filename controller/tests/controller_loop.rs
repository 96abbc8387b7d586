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

#[tokio::test]
async fn failed_writes_and_a_watch_restart_mid_rollout_still_converge_with_the_minimum_writes() {
    // Every 7th write fails (409 on policies, 500 elsewhere) and every watch restarts when
    // half the policies are Ready: retries with backoff, no duplicate work after the relist.
    let r = sim::scale_run_with(
        25,
        sim::Faults {
            fail_every: 7,
            restart_watches_midway: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["converged"], true, "{r}");
    assert_eq!(r["ready"], 25, "{r}");
    assert!(r["injected_failures"].as_u64().unwrap() >= 40, "{r}");
    assert_eq!(r["watches_restarted"], true, "{r}");
    // No write repeated: a retry may even skip the intermediate RolloutPending status.
    assert!(r["writes"].as_u64() <= r["minimum_writes"].as_u64(), "{r}");
    for (kind, n) in [
        ("Deployment/apply", 125),
        ("Service/apply", 125),
        ("Secret/create", 25),
        ("AuthPolicy/patch", 25),
    ] {
        assert_eq!(r["writes_by_kind"][kind], n, "{kind}: {r}");
    }
    assert_eq!(r["resync_writes"], 0, "{r}");
}

#[tokio::test]
async fn a_service_apply_failing_after_earlier_failed_writes_is_retried_within_seconds() {
    // Each write of the policy fails once on the way (409 on the finalizer, 500 on the cookie
    // Secret and on every Deployment) and its first Service apply fails twice, the second
    // time as the first write of its reconcile: nothing was written, so no watch event brings
    // the policy back, only the error backoff. That backoff must be the Service apply's own
    // (2 s), not one grown by the earlier writes that all went through (it was 256 s, and the
    // Service waited for the resync).
    let r = sim::scale_run_with(
        1,
        sim::Faults {
            fail_first: &[
                ("/authpolicies/app-0", 1),
                ("/namespaces/team-0/secrets", 1),
                ("/deployments/app-0-0", 1),
                ("/deployments/app-0-1", 1),
                ("/deployments/app-0-2", 1),
                ("/deployments/app-0-3", 1),
                ("/deployments/app-0-4", 1),
                ("/services/app-0-0", 2),
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r["injected_failures"], 9, "{r}");
    assert_eq!(r["converged"], true, "the Service waited for the resync: {r}");
    assert_eq!(r["writes_by_kind"]["Service/apply"], 5, "{r}");
    assert_eq!(r["resync_writes"], 0, "{r}");
}

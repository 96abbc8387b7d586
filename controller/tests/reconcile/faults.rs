//! Writes that fail or find their object changed: back-off, retries, a targetPort fight,
//! objects deleted mid-reconcile, and the write door's one policy for gone and existing objects.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sidekey_controller::cache::ObjKey;
use sidekey_controller::reconcile;

use super::support::*;

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_back_off_exponentially() {
    let failing: Responder = Box::new(|s: &Sent| {
        if s.path.contains("/deployments/") {
            (StatusCode::INTERNAL_SERVER_ERROR, status_error(500, "InternalError"))
        } else if s.path.ends_with("/secrets") {
            (StatusCode::CONFLICT, status_error(409, "AlreadyExists"))
        } else {
            reply(s)
        }
    });
    let (res, sent, ctx) = run(&world(), &policy(true), failing).await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("apply Deployment apps/hello"), "{err}");
    // The 409 on the secret (another replica made it) was fine; the status was not written
    // because the reconcile stopped at the failed apply.
    assert_eq!(
        lines(&sent),
        [format!("POST {SECRETS}"), format!("PATCH {}", deployment_path("hello"))]
    );
    let p = Arc::new(policy(true));
    let delays: Vec<Action> = (0..4).map(|_| reconcile::error_policy(p.clone(), &err, ctx.clone())).collect();
    assert_eq!(
        delays,
        [1, 2, 4, 8].map(|s| Action::requeue(Duration::from_secs(s))),
        "1 s doubling (capped at 5 min)"
    );
    assert_eq!(reconcile::backoff(20), Duration::from_secs(300));
    assert!(
        ctx.metrics
            .encode()
            .contains("sidekey_controller_reconcile_errors_total{reason=\"api_500\"} 4")
    );
}

fn failing(part: &'static str) -> Responder {
    Box::new(move |s: &Sent| {
        if s.path.contains(part) {
            (StatusCode::INTERNAL_SERVER_ERROR, status_error(500, "InternalError"))
        } else {
            reply(s)
        }
    })
}

#[tokio::test]
async fn a_failed_write_backs_off_on_its_own_failures_not_on_the_writes_before_it() {
    // The rollout's writes failing in turn, as under a flaky API server: the Deployment apply
    // three times, then (the Deployment applied) the Service apply.
    let (res, _, ctx) = run(&world(), &policy(true), failing("/deployments/")).await;
    let deployment_failed = res.unwrap_err();
    // The Deployment apply goes through and rolls out; then the Service apply fails.
    let (res, sent, _) = run(&world(), &policy(true), echo()).await;
    res.unwrap();
    let mut rolled_out = world();
    rolled_out
        .add_deployment(applied_deployment(
            &deployment("hello", "hello"),
            find(&sent, Method::PATCH, &deployment_path("hello")),
        ))
        .add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let (res, sent, _) = run(&rolled_out, &p, failing("/services/")).await;
    let service_failed = res.unwrap_err();
    assert_eq!(lines(&sent), [format!("PATCH {}", service_path("hello"))]);

    let p = Arc::new(p);
    let retry = |e: &reconcile::Error| reconcile::error_policy(p.clone(), e, ctx.clone());
    let deployment_retries: Vec<Action> = (0..3).map(|_| retry(&deployment_failed)).collect();
    assert_eq!(deployment_retries, [1, 2, 4].map(|s| Action::requeue(Duration::from_secs(s))));
    // No success came in between (the reconcile that applied the Deployment failed at the
    // Service), yet the Service apply has failed once: it is retried in 1 s, not in 8 s.
    // Nothing else would reconcile the policy meanwhile (the failed write sends no watch
    // event), so an inherited backoff left the Service unswitched for minutes.
    let service_retries: Vec<Action> = (0..2).map(|_| retry(&service_failed)).collect();
    assert_eq!(service_retries, [1, 2].map(|s| Action::requeue(Duration::from_secs(s))));
}

/// The Service as a GitOps sync leaves it: our annotations kept, the targetPort put back.
fn reverted(svc: &Service) -> Service {
    let mut s = svc.clone();
    s.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].target_port =
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("http".into()));
    s
}

fn reverts_annotation(sent: &Sent) -> Value {
    serde_json::from_str(sent.body["metadata"]["annotations"]["sidekey.dev/reverts"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn a_targetport_fight_is_detected_reported_and_not_looped() {
    let (mut w, mut p) = converge().await;
    let mut svc = sidekey_controller::cache::Cache::service(&w, &ObjKey::new("apps", "hello"))
        .map(|s| s.as_ref().clone())
        .unwrap();
    // Reverted three times: each time switched back, the count kept on the Service.
    for n in 1..=3 {
        w.add_service(reverted(&svc));
        let (res, sent, _) = run(&w, &p, echo()).await;
        res.unwrap();
        assert_eq!(lines(&sent), [format!("PATCH {}", service_path("hello"))], "revert {n}");
        assert_eq!(sent[0].body["spec"]["ports"][0]["targetPort"], "sidekey-http");
        assert_eq!(reverts_annotation(&sent[0])["count"], n);
        svc = applied_service(&reverted(&svc), &sent[0]);
    }
    // The fourth: sidekey stops re-applying and says why, once.
    w.add_service(reverted(&svc));
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(lines(&sent), [format!("PATCH {POLICY_STATUS}"), format!("POST {EVENTS}")]);
    assert_eq!(condition(&sent[0], "Ready"), ("False".into(), "ServiceReverted".into()));
    let ready = condition_message(&sent[0], "Ready");
    for needle in [
        "apps/hello",
        "4 times",
        "WITHOUT authentication",
        "managedFieldsManagers",
        "docs/gitops-argocd.md",
    ] {
        assert!(ready.contains(needle), "{needle} in {ready}");
    }
    assert_eq!(sent[0].body["status"]["protected"], 0);
    assert_eq!(sent[1].body["type"], "Warning");
    assert_eq!(sent[1].body["reason"], "ServiceReverted");
    // Every later resync: nothing written, no restore of the Service either.
    p = with_status(p, &sent[0]);
    for _ in 0..3 {
        let (res, sent, _) = run(&w, &p, echo()).await;
        res.unwrap();
        assert!(sent.is_empty(), "held: {:?}", lines(&sent));
    }
    // Once the window has passed, sidekey tries again (the count restarts).
    let mut old = reverted(&svc);
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(11);
    old.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("sidekey.dev/reverts".into(), json!({"count": 3, "since": since}).to_string());
    w.add_service(old);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(lines(&sent)[0], format!("PATCH {}", service_path("hello")));
    assert_eq!(reverts_annotation(&sent[0])["count"], 1);
}

#[tokio::test]
async fn conflicts_and_server_errors_on_writes_are_retried_until_they_converge() {
    // Every write fails twice (409 on the status, 500 elsewhere) before it succeeds; the
    // reconcile fails, backs off, and the next attempt resumes where it stopped.
    let attempts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<String, u32>::new()));
    let flaky = |attempts: Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>| -> Responder {
        Box::new(move |s: &Sent| {
            if s.path.ends_with("/events") {
                return reply(s);
            }
            let mut a = attempts.lock().unwrap();
            let n = a.entry(format!("{} {}", s.method, s.path)).or_insert(0);
            *n += 1;
            match *n {
                1 if s.path.ends_with("/status") => (StatusCode::CONFLICT, status_error(409, "Conflict")),
                1 | 2 => (StatusCode::INTERNAL_SERVER_ERROR, status_error(500, "InternalError")),
                _ => reply(s),
            }
        })
    };
    let mut w = world();
    let mut p = policy(false);
    let mut rounds = 0;
    let mut failures = 0;
    loop {
        rounds += 1;
        assert!(rounds < 20, "did not converge");
        let (res, sent, _) = run(&w, &p, flaky(attempts.clone())).await;
        // Feed back what the server accepted, as the watch would.
        for s in sent.iter().filter(|s| s.method == Method::PATCH) {
            let ok = attempts.lock().unwrap()[&s.line()] > 2 || (s.path.ends_with("/status") && attempts.lock().unwrap()[&s.line()] > 1);
            if !ok {
                continue;
            }
            if s.path == POLICY {
                p.metadata.finalizers = Some(vec!["sidekey.dev/cleanup".into()]);
            } else if s.path == POLICY_STATUS {
                p = with_status(p, s);
            } else if s.path == deployment_path("hello") {
                w.add_deployment(applied_deployment(&deployment("hello", "hello"), s));
            } else if s.path == service_path("hello") {
                w.add_service(applied_service(&service("hello", "hello"), s));
            }
        }
        if sent
            .iter()
            .any(|s| s.method == Method::POST && s.path == SECRETS && attempts.lock().unwrap()[&s.line()] > 2)
        {
            w.add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
        }
        match res {
            Ok(_) if sent.is_empty() => break,
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                assert!(e.to_string().contains("apps/hello"), "{e}");
            }
        }
    }
    assert!(failures >= 5, "each write failed before it succeeded ({failures} failed rounds)");
    let ready = p.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "Ready", "converged after {rounds} rounds");
}

#[tokio::test]
async fn a_deployment_deleted_mid_reconcile_is_reported_then_forgotten() {
    let (mut w, p) = converge().await;
    // The policy changes, so the sidecar is re-applied, but the Deployment is gone by then:
    // server-side apply of a missing object is a 404 (we never create workloads).
    let mut p2 = p.clone();
    p2.spec.access.allowed_groups.push("g2".into());
    p2.metadata.generation = Some(2);
    let gone: Responder = Box::new(|s: &Sent| {
        if s.path.contains("/deployments/") {
            (StatusCode::NOT_FOUND, status_error(404, "NotFound"))
        } else {
            reply(s)
        }
    });
    let (res, sent, _) = run(&w, &p2, gone).await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("Deployment apps/hello"), "{err}");
    assert_eq!(lines(&sent), [format!("PATCH {}", deployment_path("hello"))]);
    // The watch then shows it gone: the next reconcile restores the Service it fronted and
    // says the target is missing, without touching the Deployment again.
    w.remove_deployment(&ObjKey::new("apps", "hello"));
    let (res, sent, _) = run(&w, &p2, echo()).await;
    res.unwrap();
    assert!(!lines(&sent).iter().any(|l| l.contains("/deployments/")), "{:?}", lines(&sent));
    let status = find(&sent, Method::PATCH, POLICY_STATUS);
    assert_eq!(condition(status, "Ready").0, "False");
}

#[tokio::test]
async fn deleting_the_policy_mid_rollout_cleans_up_and_drops_the_finalizer() {
    // The sidecar is applied but the rollout has not finished: the Service was never switched.
    let mut w = world();
    let (_, sent, _) = run(&w, &policy(false), echo()).await;
    let p = with_status(policy(true), find(&sent, Method::PATCH, POLICY_STATUS));
    let mut d = applied_deployment(&deployment("hello", "hello"), find(&sent, Method::PATCH, &deployment_path("hello")));
    d.status.as_mut().unwrap().updated_replicas = Some(0);
    w.add_deployment(d).add_secret(ObjKey::new("apps", "hello-sidekey-cookie"), "d1");
    let p = deleting(p);
    let (res, sent, _) = run(&w, &p, echo()).await;
    res.unwrap();
    assert_eq!(
        lines(&sent),
        [
            format!("PATCH {}", deployment_path("hello")),
            format!("POST {EVENTS}"),
            format!("PATCH {POLICY}"),
        ],
        "no Service restore (it was never switched), the sidecar released, the finalizer dropped"
    );
    assert_eq!(sent[0].body.as_object().unwrap().len(), 3, "an empty apply releases our fields");
    assert_eq!(sent[2].body["metadata"]["finalizers"], json!([]));
}

/// Answers `code` to every request whose method and path contain `part`, echoes the rest.
fn answering(method: Method, part: &'static str, code: u16) -> Responder {
    Box::new(move |s: &Sent| {
        if s.method == method && s.path.contains(part) {
            (StatusCode::from_u16(code).unwrap(), status_error(code, "refused"))
        } else {
            reply(s)
        }
    })
}

#[tokio::test]
async fn the_write_door_counts_only_what_the_server_accepted_and_lets_undos_find_nothing() {
    // Deletion when everything is already gone: each undo answered 404 is done, not a write.
    let (w, p) = converge().await;
    let p = deleting(p);
    let gone: Responder = Box::new(|s: &Sent| {
        if s.method == Method::PATCH {
            (StatusCode::NOT_FOUND, status_error(404, "NotFound"))
        } else {
            reply(s)
        }
    });
    let (res, sent, ctx) = run(&w, &p, gone).await;
    assert_eq!(res.unwrap(), Action::await_change());
    assert_eq!(lines(&sent), cleanup_requests());
    assert_eq!(ctx.metrics.total_writes(), 0, "404s wrote nothing");

    // A cookie Secret that exists already (409) is kept, not overwritten, and not counted.
    let (res, sent, ctx) = run(&world(), &policy(false), answering(Method::POST, "/secrets", 409)).await;
    res.unwrap();
    assert_eq!(
        sent.iter().filter(|s| s.path.ends_with("/secrets")).count(),
        1,
        "created once, never replaced"
    );
    assert_eq!(ctx.metrics.total_writes(), 3, "finalizer, sidecar and status; not the Secret");

    // Protecting a Deployment that is gone is an error naming the write, not a success.
    let (res, _, ctx) = run(&world(), &policy(true), answering(Method::PATCH, "/deployments/", 404)).await;
    let err = res.unwrap_err();
    assert_eq!(err.write(), "apply Deployment apps/hello");
    assert_eq!(err.reason(), "api_404");
    assert_eq!(ctx.metrics.total_writes(), 1, "the cookie Secret created before it, nothing more");
}

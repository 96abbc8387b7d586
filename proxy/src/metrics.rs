//! Prometheus metrics, served on `metrics_address` at `/metrics`. One process-wide registry:
//! the request path, the relying party and the session store record into it without
//! threading a handle through every layer.

use std::sync::LazyLock;
use std::time::Duration;

use http::{Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::body::{Body, full};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub auth_decisions: Family<DecisionLabels, Counter>,
    pub idp_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub redis_duration: Family<OperationLabels, Histogram, fn() -> Histogram>,
    pub refreshes: Family<OutcomeLabels, Counter>,
    pub upstream_errors: Family<KindLabels, Counter>,
    registry: Registry,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            auth_decisions: Family::default(),
            idp_duration: Family::new_with_constructor(latency_histogram),
            redis_duration: Family::new_with_constructor(latency_histogram),
            refreshes: Family::default(),
            upstream_errors: Family::default(),
            registry: Registry::with_prefix("sidekey_proxy"),
        };
        let r = &mut m.registry;
        r.register("requests", "Requests by route class and status code", m.requests.clone());
        r.register(
            "request_duration_seconds",
            "Time to answer a request, by route class",
            m.request_duration.clone(),
        );
        r.register(
            "auth_decisions",
            "Access decisions: allowed, unauthenticated, denied, skipped",
            m.auth_decisions.clone(),
        );
        r.register(
            "idp_request_duration_seconds",
            "Identity provider requests by operation (discovery, jwks, token, graph)",
            m.idp_duration.clone(),
        );
        r.register(
            "redis_request_duration_seconds",
            "Session store (Redis) commands by operation",
            m.redis_duration.clone(),
        );
        r.register(
            "refreshes",
            "Token refreshes by outcome (refreshed, ended, unavailable)",
            m.refreshes.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures by kind (unreachable, timeout, no_route, switched_protocols)",
            m.upstream_errors.clone(),
        );
        m
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub fn get() -> &'static Metrics {
    &METRICS
}

pub fn decision(decision: &'static str) {
    get().auth_decisions.get_or_create(&DecisionLabels { decision }).inc();
}

pub fn refresh(outcome: &'static str) {
    get().refreshes.get_or_create(&OutcomeLabels { outcome }).inc();
}

pub fn upstream_error(kind: &'static str) {
    get().upstream_errors.get_or_create(&KindLabels { kind }).inc();
}

pub fn idp(operation: &'static str, took: Duration) {
    get()
        .idp_duration
        .get_or_create(&OperationLabels { operation })
        .observe(took.as_secs_f64());
}

pub fn redis(operation: &'static str, took: Duration) {
    get()
        .redis_duration
        .get_or_create(&OperationLabels { operation })
        .observe(took.as_secs_f64());
}

pub fn request(route: &'static str, code: u16, took: Duration) {
    let m = get();
    m.requests.get_or_create(&RequestLabels { route, code }).inc();
    m.request_duration.get_or_create(&RouteLabels { route }).observe(took.as_secs_f64());
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let resp: Response<Body> = if req.uri().path() == "/metrics" {
                    let mut r = Response::new(full(get().encode()));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                } else {
                    let mut r = Response::new(full("404 page not found"));
                    *r.status_mut() = StatusCode::NOT_FOUND;
                    r
                };
                Ok::<_, std::convert::Infallible>(resp)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

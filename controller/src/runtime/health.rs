//! The process's life: the stop signal seen in every state, the phase `/readyz` reports,
//! and the health and metrics endpoint.

use super::*;

/// SIGTERM or Ctrl-C, seen in every state: registered before the first await, so a standby
/// waiting for the Lease stops at once too (as PID 1 of a container it would otherwise ignore
/// SIGTERM and wait for the kubelet's SIGKILL, 30 s later).
#[derive(Clone)]
pub struct Stopping(tokio::sync::watch::Receiver<bool>);

impl Stopping {
    pub fn on_signals() -> Self {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
            let _ = tx.send(true);
        });
        Stopping(rx)
    }

    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Where the process is, for `/readyz`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting, or the leader filling its caches.
    Starting = 0,
    /// Waiting for the Lease while another replica leads.
    Standby = 1,
    /// Caches synced; reconciling.
    Reconciling = 2,
    /// The leader, waiting for the AuthPolicy CRD to be installed.
    NoPolicyCrd = 3,
}

/// A standby replica is ready: it is healthy and doing its job (waiting). Reporting it
/// unready would stall every rolling update of a 2-replica Deployment, since the new
/// pod could never become Ready while the old leader holds the Lease.
pub fn readyz(phase: u8) -> (u16, &'static str) {
    match phase {
        p if p == Phase::Reconciling as u8 => (200, "ok\n"),
        p if p == Phase::Standby as u8 => (200, "standby: another replica holds the Lease\n"),
        p if p == Phase::NoPolicyCrd as u8 => (
            503,
            "AuthPolicy CRD not installed: kubectl apply --server-side -f crds/sidekey.dev_authpolicies.yaml\n",
        ),
        _ => (503, "caches not synced\n"),
    }
}

pub(super) async fn serve_health(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicU8>) {
    use http_body_util::Full;
    use hyper::{Response, StatusCode, service::service_fn};
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = match req.uri().path() {
                    "/metrics" => (StatusCode::OK, metrics.encode()),
                    "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                    "/readyz" => {
                        let (code, body) = readyz(ready.load(Ordering::Relaxed));
                        (StatusCode::from_u16(code).expect("status"), body.to_string())
                    }
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .status(status)
                            .body(Full::new(bytes::Bytes::from(body)))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

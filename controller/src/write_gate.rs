//! Fencing for leader election: a replica may write only while its Lease is fresh.
//!
//! The Lease says who leads, but a leader that cannot renew (the API server away, a network
//! partition) does not learn that it lost the Lease until it can talk again; meanwhile
//! another replica may take over once `renewTime + leaseDuration` has passed. Exiting at the
//! renew deadline (client-go's answer) turns every API-server restart into a controller
//! crash. Instead every mutating request goes through this gate, which is open only until
//! shortly before the Lease could expire: the replica stays up, keeps its caches, and
//! resumes writing the moment a renewal succeeds, with no window in which two replicas
//! write.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request};

/// Open until a deadline that each successful Lease renewal moves forward.
#[derive(Clone, Debug)]
pub struct WriteGate {
    until: Arc<Mutex<Option<Instant>>>,
}

/// Why a write was not sent.
#[derive(Debug, thiserror::Error)]
#[error("not written: this replica's leader Lease was not renewed in time (API server unreachable?); retrying once it is")]
pub struct GateClosed;

impl WriteGate {
    /// Closed until [`WriteGate::renewed`] is called.
    pub fn closed() -> Self {
        WriteGate {
            until: Arc::new(Mutex::new(None)),
        }
    }

    /// Always open: for a single replica run without leader election.
    pub fn always_open() -> Self {
        WriteGate {
            until: Arc::new(Mutex::new(Some(Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)))),
        }
    }

    /// The Lease was written at `sent` (taken before the request left) for `valid`: writes
    /// may go out until then.
    pub fn renewed(&self, sent: Instant, valid: Duration) {
        let mut until = self.until.lock().expect("gate lock");
        let next = sent + valid;
        if until.is_none_or(|u| u < next) {
            *until = Some(next);
        }
    }

    pub fn close(&self) {
        *self.until.lock().expect("gate lock") = None;
    }

    pub fn is_open(&self) -> bool {
        self.until.lock().expect("gate lock").is_some_and(|u| Instant::now() < u)
    }
}

/// Reads, and the Lease itself, always pass: only a fresh Lease may be written, and renewing
/// it is how the gate reopens.
pub fn needs_gate(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && !path.starts_with("/apis/coordination.k8s.io/")
}

/// A tower layer for kube's client that refuses gated requests while the gate is closed.
#[derive(Clone)]
pub struct GateLayer(pub WriteGate);

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: WriteGate,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<Request<B>> for Gated<S>
where
    S: tower::Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if needs_gate(req.method(), req.uri().path()) && !self.gate.is_open() {
            return Box::pin(std::future::ready(Err(Box::new(GateClosed) as BoxError)));
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_writes_other_than_the_lease_are_gated() {
        assert!(!needs_gate(&Method::GET, "/apis/apps/v1/deployments"));
        assert!(needs_gate(&Method::PATCH, "/apis/apps/v1/namespaces/a/deployments/d"));
        assert!(needs_gate(&Method::POST, "/api/v1/namespaces/a/secrets"));
        assert!(needs_gate(&Method::DELETE, "/api/v1/namespaces/a/secrets/s"));
        assert!(!needs_gate(
            &Method::PUT,
            "/apis/coordination.k8s.io/v1/namespaces/x/leases/sidekey-controller"
        ));
    }

    #[test]
    fn the_gate_opens_on_renewal_and_closes_at_the_deadline() {
        let gate = WriteGate::closed();
        assert!(!gate.is_open());
        let now = Instant::now();
        gate.renewed(now, Duration::from_secs(12));
        assert!(gate.is_open());
        // An older renewal never shortens the window.
        gate.renewed(now - Duration::from_secs(30), Duration::from_secs(12));
        assert!(gate.is_open());
        gate.close();
        assert!(!gate.is_open());
        gate.renewed(now - Duration::from_secs(13), Duration::from_secs(12));
        assert!(!gate.is_open(), "a renewal older than its validity opens nothing");
        assert!(WriteGate::always_open().is_open());
    }
}

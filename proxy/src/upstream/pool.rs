//! Keep-alive connections to one plain-HTTP/1.1 upstream (`http://`, the sidecar's app on
//! loopback), owned by one server worker.
//!
//! hyper-util's pooled client costs about a tenth of an authenticated request here (see
//! BENCHMARKS.md): a lock and a keyed lookup per checkout, a connect future built and
//! dropped on every request, and a task spawned per request to return the connection.
//! This pool is a list per worker: a checkout pops the newest idle connection, and the
//! response body puts it back once the body is done. A request that never reached a
//! connection (the upstream closed it while it sat idle) is sent again on a new one, as
//! hyper-util does; one that was written is never sent twice.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Idle connections kept per worker and upstream (hyper-util's `pool_max_idle_per_host`
/// was 256 for the whole process).
const MAX_IDLE: usize = 128;
/// An idle connection older than this is closed rather than reused: upstreams close theirs
/// after a while (nginx after 60 s, Node.js after 5 s), and one we never use again costs a
/// socket on both sides.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub(super) enum PoolError {
    #[error("connect to {authority}: {source}")]
    Connect { authority: Authority, source: io::Error },
    #[error("connect to {authority}: timed out after {timeout:?}")]
    ConnectTimeout { authority: Authority, timeout: Duration },
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

pub(super) struct Pool {
    authority: Authority,
    host: HeaderValue,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

impl Pool {
    pub(super) fn new(authority: Authority, connect_timeout: Duration) -> Arc<Pool> {
        let host = HeaderValue::from_str(authority.as_str()).expect("an authority is a header value");
        Arc::new(Pool {
            authority,
            host,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` (an origin-form URI: path and query) and returns the response, whose body
    /// returns the connection here when it is done.
    pub(super) async fn send(self: &Arc<Self>, mut req: Request<Incoming>) -> Result<Response<PooledBody>, PoolError> {
        // hyper's client adds `Host` from the URI when the request has none; so does this.
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        loop {
            let (mut sender, fresh) = match self.checkout() {
                Some(sender) => (sender, false),
                None => (self.connect().await?, true),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let upgrade = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let (parts, body) = resp.into_parts();
                    // A switched connection is the client's now, never anyone else's.
                    let sender = (!upgrade).then_some(sender);
                    return Ok(Response::from_parts(parts, PooledBody::new(body, sender, self.clone())));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closed while it sat idle. A new
                    // connection that cannot take it is a real failure.
                    Some(back) if !fresh => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The newest idle connection ready for a request; closed and stale ones are dropped.
    fn checkout(&self) -> Option<http1::SendRequest<Incoming>> {
        let mut idle = self.lock();
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
            // Closed, stale, or still busy with a body nobody will read (its reader went
            // away): hyper closes such a connection, and dropping the sender lets it.
        }
        None
    }

    fn checkin(&self, sender: http1::SendRequest<Incoming>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes every idle connection (a quiet worker handing its resources back).
    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // Only ever taken on this worker's thread; a panic while holding it left a valid list.
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn connect(&self) -> Result<http1::SendRequest<Incoming>, PoolError> {
        let authority = &self.authority;
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((connect_host(authority), port)))
            .await
            .map_err(|_| PoolError::ConnectTimeout {
                authority: authority.clone(),
                timeout: self.connect_timeout,
            })?
            .map_err(|source| PoolError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

/// The host to connect to: an IPv6 literal without the brackets a URL puts around it.
fn connect_host(authority: &Authority) -> &str {
    let host = authority.host();
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// `uri`'s path and query: the origin form an HTTP/1.1 request line carries.
pub(super) fn origin_form(uri: &Uri) -> Uri {
    let pq = uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

/// An upstream response body that returns its connection to the pool once it has ended,
/// or when it is dropped (hyper closes a connection whose body was not read to the end, and
/// checkout skips it then).
pub(super) struct PooledBody {
    inner: Incoming,
    sender: Option<http1::SendRequest<Incoming>>,
    pool: Arc<Pool>,
}

impl PooledBody {
    fn new(inner: Incoming, sender: Option<http1::SendRequest<Incoming>>, pool: Arc<Pool>) -> Self {
        PooledBody { inner, sender, pool }
    }

    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.checkin(sender);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_host_and_port_of_the_upstream_url() {
        for (authority, host, port) in [
            ("127.0.0.1:8080", "127.0.0.1", Some(8080)),
            ("[::1]:3000", "::1", Some(3000)),
            ("app.shop.svc", "app.shop.svc", None),
        ] {
            let a: Authority = authority.parse().unwrap();
            assert_eq!((connect_host(&a), a.port_u16()), (host, port), "{authority}");
        }
        let uri: Uri = "http://127.0.0.1:8080/base/page?q=1".parse().unwrap();
        assert_eq!(origin_form(&uri), "/base/page?q=1");
    }
}

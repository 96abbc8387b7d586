//! The listeners: HTTP/1.1 and h2c on `http_address`, HTTP/1.1 and h2 (ALPN) over TLS on
//! `https_address`; upgrades allowed, one request-head deadline for every protocol (see
//! [`head_deadline`](crate::head_deadline)), size limits, and a graceful shutdown that lets
//! in-flight requests finish within a bound.
//!
//! Workers: one single-threaded runtime per CPU the process may use, each accepting on its
//! own `SO_REUSEPORT` socket, so a connection, its upstream connections and every task
//! they wake stay on one thread (the nginx model). A work-stealing runtime spent most of
//! its time waking and switching threads on a proxy's ping-pong traffic (see BENCHMARKS.md).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::ConnectionLimits;
use crate::head_deadline::{Closing, Cut, Watch, WatchedBody};
use crate::idle_timeout::{self, Activity, Tracked};

pub use crate::head_deadline::MAX_PENDING_HEADS;

/// Streams in flight on one HTTP/2 connection (hyper's default is 200): each holds a
/// request and an upstream exchange, so one client connection cannot hold hundreds.
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Request line plus headers; oversize requests get 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// A worker with no connection for this long hands its free memory back (see [`on_idle`]).
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// Client connections open on this worker.
    static OPEN: Cell<usize> = const { Cell::new(0) };
    /// Whether a connection opened since the last check.
    static OPENED: Cell<bool> = const { Cell::new(false) };
}

static IDLE_HOOK: OnceLock<fn()> = OnceLock::new();

/// Registers what a worker calls, on its own thread, once its last client connection has
/// closed and none has opened for [`IDLE_TRIM_AFTER`]. The binary returns the allocator's
/// free pages there: mimalloc purges only when a thread allocates again, so a worker gone
/// quiet after a burst kept its peak RSS for good.
pub fn on_idle(hook: fn()) {
    let _ = IDLE_HOOK.set(hook);
}

/// Counts a client connection while it lives.
struct Open;

impl Open {
    fn new() -> Self {
        OPEN.with(|o| o.set(o.get() + 1));
        OPENED.with(|o| o.set(true));
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.with(|o| o.set(o.get().saturating_sub(1)));
    }
}

/// Once per quiet spell (a whole period with no connection open and none opened, and only
/// if something was served since the last call): `release` (closing idle upstream
/// connections), then, once their tasks have ended and freed their buffers, `hook`.
async fn trim_when_idle(release: impl Fn(), hook: impl Fn()) {
    let mut tick = tokio::time::interval(IDLE_TRIM_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut pending = false;
    loop {
        tick.tick().await;
        if OPEN.with(Cell::get) > 0 {
            continue;
        }
        if OPENED.with(|o| o.replace(false)) {
            pending = true;
        } else if std::mem::take(&mut pending) {
            release();
            tokio::time::sleep(Duration::from_millis(100)).await;
            hook();
        }
    }
}

/// The number of workers: `configured`, or with 0 the CPUs this process may use (a cgroup
/// CPU limit included).
pub fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// `n` listening sockets on `addr` with `SO_REUSEPORT`, the kernel spreading connections
/// over them. Port 0 picks one free port for all of them.
pub fn bind(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    // SO_REUSEPORT would let this process share a port with another one of the same user
    // (a second proxy started by mistake) and split its traffic: a plain bind first fails
    // with "address in use" instead.
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    let mut addr = addr;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

fn builder(limits: ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    builder
}

/// Serves `listener` until `shutdown`; with `tls`, every connection is a TLS connection.
pub async fn serve(listener: TcpListener, app: Arc<App>, tls: Option<TlsAcceptor>, shutdown: impl Future<Output = ()>) {
    let limits = app.limits();
    let builder = Arc::new(builder(limits));
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let scheme: &'static str = if tls.is_some() { "https" } else { "http" };
    // A quiet worker closes its idle upstream connections, then hands back its free memory.
    let hook = IDLE_HOOK.get().copied();
    let trimmer = tokio::spawn(trim_when_idle(
        {
            let app = app.clone();
            move || app.close_idle()
        },
        move || {
            if let Some(hook) = hook {
                hook();
            }
        },
    ));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, builder, tls, stop) = (app.clone(), builder.clone(), tls.clone(), stop.clone());
        let open = Open::new();
        connections.spawn(async move {
            let _open = open;
            // Made in the connection's own task: see `Watch::cut`.
            let watch = Watch::new(limits.header_read);
            let activity = Activity::new();
            let stream = Tracked::new(stream, activity.clone());
            match tls {
                None => serve_connection(&builder, watch.io(stream), app, peer, scheme, &activity, &watch, &stop, limits).await,
                Some(acceptor) => {
                    watch.handshake_started();
                    let stream = tokio::select! {
                        accepted = acceptor.accept(stream) => match accepted {
                            Ok(s) => s,
                            Err(e) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        },
                        _ = watch.cut(None) => return tracing::debug!("TLS handshake not done by the request-head deadline"),
                    };
                    serve_connection(&builder, watch.io(stream), app, peer, scheme, &activity, &watch, &stop, limits).await
                }
            }
        });
    }
    drop(listener);
    trimmer.abort();
    tracing::info!(scheme, "shutting down: waiting for in-flight requests");
    stop.cancel();
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait()).await.is_err() {
        tracing::warn!(grace = ?limits.shutdown_grace, "in-flight requests did not finish in time");
    }
}

/// Serves one connection until it closes. On shutdown, or once the client has been silent
/// too long, it is shut down gracefully: no new requests, the one in flight answered. A
/// connection whose request head is overdue is shut down too, and dropped once nothing is
/// in flight or the request-head deadline ([`ConnectionLimits::header_read`]) later; one pushed out by newer unfinished heads is
/// dropped at once (see [`head_deadline`](crate::head_deadline)).
#[allow(clippy::too_many_arguments)]
async fn serve_connection<I>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    app: Arc<App>,
    peer: SocketAddr,
    scheme: &'static str,
    activity: &Activity,
    watch: &Watch,
    stop: &CancellationToken,
    limits: ConnectionLimits,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let requests = watch.requests();
    let service = service_fn(move |req| {
        let app = app.clone();
        let in_flight = requests.request();
        async move {
            let resp = app.handle(req, peer, scheme).await;
            Ok::<_, Infallible>(resp.map(|body| WatchedBody::new(body, in_flight)))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing: Option<Closing> = None;
    let close = |by: Option<Duration>| {
        let since = tokio::time::Instant::now();
        Some(Closing {
            since,
            by: by.map(|d| since + d),
        })
    };
    loop {
        tokio::select! {
            // The connection first: the deadline is then looked at after every poll that
            // may have moved it, with no wake-up needed (see `Watch::cut`).
            biased;
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(error = %e, "connection closed with error");
                }
                return;
            }
            cut = watch.cut(closing) => match cut {
                Cut::Overdue => {
                    tracing::debug!("closing a connection whose request head is overdue");
                    closing = close(Some(limits.header_read));
                    conn.as_mut().graceful_shutdown();
                }
                Cut::Evicted => return tracing::debug!("dropped a connection with an unfinished request head: too many"),
                Cut::Closed => return,
            },
            () = stop.cancelled(), if closing.is_none() => {
                closing = close(None);
                conn.as_mut().graceful_shutdown();
            }
            () = idle_timeout::expired(activity, limits.header_read, limits.idle), if closing.is_none() => {
                closing = close(None);
                tracing::debug!("closing an idle connection");
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_idle_hook_runs_once_per_quiet_spell_and_never_while_serving() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn hook() {
            CALLS.fetch_add(1, Ordering::SeqCst);
        }
        let calls = || CALLS.load(Ordering::SeqCst);
        let trimmer = tokio::spawn(trim_when_idle(|| {}, hook));
        let wait = |s: f64| tokio::time::sleep(Duration::from_secs_f64(s));
        wait(5.5).await;
        assert_eq!(calls(), 0, "nothing served: nothing to hand back");
        let open = Open::new();
        wait(5.0).await;
        assert_eq!(calls(), 0, "a connection is open");
        drop(open);
        wait(2.5).await;
        assert_eq!(calls(), 1, "quiet for a whole period after the last connection");
        wait(10.0).await;
        assert_eq!(calls(), 1, "once per quiet spell");
        // Short connections that come and go keep the worker busy.
        for _ in 0..5 {
            drop(Open::new());
            wait(0.9).await;
        }
        assert_eq!(calls(), 1);
        wait(2.5).await;
        assert_eq!(calls(), 2);
        trimmer.abort();
    }

    #[test]
    fn workers_share_one_port_and_a_taken_port_is_refused() {
        let ls = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(ls.len(), 3);
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        // Another process of the same user could join a SO_REUSEPORT group and take a
        // share of the connections; a second proxy on the same address must fail instead.
        let err = bind(ls[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(bind(plain.local_addr().unwrap(), 1).unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn zero_workers_means_one_per_cpu() {
        assert_eq!(worker_count(3), 3);
        assert_eq!(worker_count(0), std::thread::available_parallelism().unwrap().get());
    }
}

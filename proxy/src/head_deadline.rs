//! One deadline on a complete request head, for HTTP/1.1, h2c and h2 over TLS alike.
//!
//! A connection must deliver a complete request head within the timeout of opening, and
//! again within the timeout of going idle (its last response finished); over HTTP/2 a frame
//! other than DATA, and a HEADERS frame with its CONTINUATIONs, must also arrive within the
//! timeout of its first byte while other streams are in flight. hyper's header read timeout
//! covers HTTP/1.1 only and HTTP/2 has none, so an h2c client sending its HEADERS frame a
//! byte at a time held its connection (and ~20 KiB) for good.
//!
//! [`Watch`] is shared by the connection's reads ([`WatchedIo`], which follows HTTP/2 frame
//! boundaries without decoding anything), its service ([`Watch::request`]: a head is
//! complete, a request is in flight until its response body is dropped) and its task, which
//! waits on [`Watch::cut`]. Process-wide, at most [`MAX_PENDING_HEADS`] connections may hold
//! an unfinished head that has begun to arrive; a newer one cuts the oldest, so a flood of
//! slow heads costs bounded memory whatever its rate.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connections with an unfinished request head that has begun to arrive, process-wide.
/// Each costs at most some 20 KiB when idle in the middle of an HTTP/2 frame (about 5 KiB
/// over HTTP/1.1, up to the 64 KiB header limit for a nearly complete head).
pub const MAX_PENDING_HEADS: usize = 4096;

/// After the server asked a connection to close, how long it may stay with nothing in
/// flight: enough for a GOAWAY or the last bytes of a response to leave, and no longer, as
/// an HTTP/2 peer that never answers the shutdown PING would keep it open for good.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

static PENDING: Registry = Registry::new(MAX_PENDING_HEADS);

/// Why [`Watch::cut`] resolved.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// A request head is overdue: shut the connection down (gracefully, then [`Closing`]).
    Overdue,
    /// Newer unfinished heads pushed this one out: drop the connection now.
    Evicted,
    /// Closing: nothing is in flight any more, or the grace is over. Drop it now.
    Closed,
}

/// A connection the server has asked to shut down.
#[derive(Clone, Copy)]
pub struct Closing {
    pub since: Instant,
    /// Dropped then even with requests in flight.
    pub by: Option<Instant>,
}

/// The connection's watch, owned by its task; dropping it ends the watching (an upgraded
/// connection's I/O lives on without it).
pub struct Watch {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    registry: &'static Registry,
    state: Mutex<State>,
    /// The connection task, woken when a deadline appears or the connection is evicted.
    waker: AtomicWaker,
    evicted: AtomicBool,
    /// The connection task's id: changes made while it runs need no wake-up, as it polls
    /// [`Watch::cut`] right after the connection.
    task: Option<tokio::task::Id>,
}

struct State {
    in_flight: usize,
    /// Since when nothing has been in flight (the connection opened, or its last response
    /// finished): with nothing in flight, the next head is due `timeout` after this.
    quiet_since: Instant,
    /// Bytes arrived since `quiet_since` (or a TLS handshake began): the head has begun.
    idle_bytes: bool,
    /// HTTP/2: when the unfinished frame or header block now arriving began.
    frame_since: Option<Instant>,
    sniff: Sniff,
    /// Inside a header block: a HEADERS frame without END_HEADERS, CONTINUATIONs to come.
    in_block: bool,
    slot: Option<u64>,
    done: bool,
}

impl State {
    /// A connection that has just opened, with `in_flight` requests under way.
    fn new(in_flight: usize) -> Self {
        State {
            in_flight,
            quiet_since: Instant::now(),
            idle_bytes: false,
            frame_since: None,
            sniff: Sniff::Preface(0),
            in_block: false,
            slot: None,
            done: false,
        }
    }
}

/// Where the reads are in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sniff {
    /// Matching the HTTP/2 client preface; this many bytes of it so far.
    Preface(usize),
    /// Not HTTP/2: the service marks the heads (hyper's parser finds them).
    Http1,
    /// A frame header, this many of its 9 bytes so far.
    FrameHeader { got: usize, buf: [u8; 9] },
    /// A frame's payload, this many bytes still to come.
    Payload { left: usize, kind: u8, flags: u8 },
}

impl Watch {
    /// Watches a connection accepted now; its first head is due within `timeout`.
    pub fn new(timeout: Duration) -> Watch {
        Watch::with_registry(timeout, &PENDING)
    }

    fn with_registry(timeout: Duration, registry: &'static Registry) -> Watch {
        Watch {
            shared: Arc::new(Shared {
                timeout,
                registry,
                state: Mutex::new(State::new(0)),
                waker: AtomicWaker::new(),
                evicted: AtomicBool::new(false),
                task: tokio::task::try_id(),
            }),
        }
    }

    /// Wraps the connection's plaintext I/O (above TLS) so its reads are followed.
    pub fn io<T>(&self, inner: T) -> WatchedIo<T> {
        WatchedIo {
            inner,
            shared: self.shared.clone(),
        }
    }

    /// A TLS handshake is under way: bytes are coming, and the connection counts against
    /// the cap from now (a handshake holds buffers too).
    pub fn handshake_started(&self) {
        let mut st = self.shared.lock();
        st.idle_bytes = true;
        self.shared.update_slot(&mut st);
    }

    /// A request head is complete and its request is in flight until the returned guard
    /// (carried by the response body) is dropped.
    pub fn request(&self) -> InFlight {
        self.shared.request()
    }

    /// What the service owns to mark heads as [`Watch::request`] does: hyper wants a
    /// `'static` service, which cannot borrow the watch.
    pub fn requests(&self) -> Requests {
        Requests(self.shared.clone())
    }

    /// Resolves when the connection must be shut down or dropped (see [`Cut`]). Without
    /// `closing`, at the head deadline or on eviction; with it, on eviction, once nothing has
    /// been in flight for a moment, or at `closing.by`.
    pub fn cut(&self, closing: Option<Closing>) -> CutFuture<'_> {
        CutFuture {
            shared: &self.shared,
            closing,
            sleep: None,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.done = true;
        self.shared.update_slot(&mut st);
    }
}

/// Marks request heads from the service.
#[derive(Clone)]
pub struct Requests(Arc<Shared>);

impl Requests {
    pub fn request(&self) -> InFlight {
        self.0.request()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it leaves plain counters behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request(self: &Arc<Self>) -> InFlight {
        let mut st = self.lock();
        st.in_flight += 1;
        st.idle_bytes = false;
        self.update_slot(&mut st);
        InFlight(self.clone())
    }

    fn finished(self: &Arc<Self>) {
        let mut st = self.lock();
        st.in_flight -= 1;
        if st.in_flight == 0 {
            st.quiet_since = Instant::now();
            st.idle_bytes = false;
            self.update_slot(&mut st);
            drop(st);
            self.wake();
        }
    }

    /// Bytes read from the client.
    fn on_read(self: &Arc<Self>, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut st = self.lock();
        if st.done {
            return;
        }
        let due_before = st.deadline().is_some();
        if st.in_flight == 0 {
            st.idle_bytes = true;
        }
        if !matches!(st.sniff, Sniff::Http1) {
            st.follow_frames(data, Instant::now());
        }
        self.update_slot(&mut st);
        let due_now = st.deadline().is_some();
        drop(st);
        if due_now && !due_before {
            self.wake();
        }
    }

    /// Enters or leaves the registry of unfinished heads as the state says.
    fn update_slot(self: &Arc<Self>, st: &mut State) {
        let pending = !st.done && ((st.in_flight == 0 && st.idle_bytes) || st.frame_since.is_some());
        match (pending, st.slot) {
            (true, None) => st.slot = Some(self.registry.enter(Arc::downgrade(self))),
            (false, Some(id)) => {
                self.registry.leave(id);
                st.slot = None;
            }
            _ => {}
        }
    }

    fn wake(&self) {
        if self.task.is_none() || tokio::task::try_id() != self.task {
            self.waker.wake();
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.waker.wake();
    }
}

impl State {
    /// When the head now due must be complete.
    fn deadline(&self) -> Option<Instant> {
        let idle = (self.in_flight == 0).then_some(self.quiet_since);
        match (idle, self.frame_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Follows the HTTP/2 frames in `data`, keeping `frame_since` on the unfinished one.
    fn follow_frames(&mut self, mut data: &[u8], now: Instant) {
        while !data.is_empty() {
            match self.sniff {
                Sniff::Http1 => return,
                Sniff::Preface(n) => {
                    let k = (H2_PREFACE.len() - n).min(data.len());
                    if data[..k] != H2_PREFACE[n..n + k] {
                        self.sniff = Sniff::Http1;
                        return;
                    }
                    data = &data[k..];
                    self.sniff = if n + k == H2_PREFACE.len() {
                        Sniff::FrameHeader { got: 0, buf: [0; 9] }
                    } else {
                        Sniff::Preface(n + k)
                    };
                }
                Sniff::FrameHeader { mut got, mut buf } => {
                    if got == 0 && self.frame_since.is_none() {
                        self.frame_since = Some(now);
                    }
                    let k = (9 - got).min(data.len());
                    buf[got..got + k].copy_from_slice(&data[..k]);
                    got += k;
                    data = &data[k..];
                    if got < 9 {
                        self.sniff = Sniff::FrameHeader { got, buf };
                        continue;
                    }
                    let left = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
                    let (kind, flags) = (buf[3], buf[4]);
                    // A request body may arrive as slowly as the client likes; only heads
                    // and control frames are held to the deadline.
                    if kind == DATA && !self.in_block {
                        self.frame_since = None;
                    }
                    self.sniff = Sniff::Payload { left, kind, flags };
                    if left == 0 {
                        self.frame_done(kind, flags);
                    }
                }
                Sniff::Payload { left, kind, flags } => {
                    let k = left.min(data.len());
                    data = &data[k..];
                    self.sniff = Sniff::Payload {
                        left: left - k,
                        kind,
                        flags,
                    };
                    if left == k {
                        self.frame_done(kind, flags);
                    }
                }
            }
        }
    }

    fn frame_done(&mut self, kind: u8, flags: u8) {
        if kind == HEADERS || kind == CONTINUATION {
            self.in_block = flags & END_HEADERS == 0;
        }
        if !self.in_block {
            self.frame_since = None;
        }
        self.sniff = Sniff::FrameHeader { got: 0, buf: [0; 9] };
    }
}

/// A request in flight; its drop (with the response body) makes the connection idle again.
pub struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished();
    }
}

/// A response body that keeps its request in flight until it is dropped.
pub struct WatchedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> WatchedBody<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        WatchedBody {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O, its reads followed by the [`Watch`].
pub struct WatchedIo<T> {
    inner: T,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.shared.on_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// See [`Watch::cut`]. Changes the connection task makes itself (its reads, an HTTP/1.1
/// response finished) wake nothing, which would cost a second poll of the connection per
/// request: the task polls this right after the connection (a `biased` select) and sees
/// them. Changes made elsewhere (a response body dropped by an HTTP/2 stream task, an
/// eviction) wake it.
pub struct CutFuture<'a> {
    shared: &'a Arc<Shared>,
    closing: Option<Closing>,
    sleep: Option<(Instant, Pin<Box<Sleep>>)>,
}

impl CutFuture<'_> {
    /// The cut due at `now`, or when to look again.
    fn check(&self, now: Instant) -> Result<Option<Instant>, Cut> {
        if self.shared.evicted.load(Ordering::Acquire) {
            return Err(Cut::Evicted);
        }
        let st = self.shared.lock();
        match self.closing {
            None => match st.deadline() {
                Some(due) if now >= due + self.shared.timeout => Err(Cut::Overdue),
                Some(due) => Ok(Some(due + self.shared.timeout)),
                None => Ok(None),
            },
            Some(closing) => {
                let drained = (st.in_flight == 0).then(|| st.quiet_since.max(closing.since) + CLOSE_LINGER);
                let next = match (drained, closing.by) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                match next {
                    Some(at) if now >= at => Err(Cut::Closed),
                    next => Ok(next),
                }
            }
        }
    }
}

impl Future for CutFuture<'_> {
    type Output = Cut;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Cut> {
        let this = self.get_mut();
        this.shared.waker.register(cx.waker());
        let mut now = Instant::now();
        loop {
            let at = match this.check(now) {
                Err(cut) => return Poll::Ready(cut),
                Ok(None) => return Poll::Pending,
                Ok(Some(at)) => at,
            };
            match &mut this.sleep {
                Some((armed, sleep)) if *armed != at => {
                    sleep.as_mut().reset(at);
                    *armed = at;
                }
                Some(_) => {}
                None => this.sleep = Some((at, Box::pin(tokio::time::sleep_until(at)))),
            }
            let (_, sleep) = this.sleep.as_mut().expect("armed above");
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired: look again as of its deadline at least.
            now = now.max(at);
        }
    }
}

/// The connections holding an unfinished head, oldest first.
struct Registry {
    cap: usize,
    inner: Mutex<(u64, BTreeMap<u64, Weak<Shared>>)>,
}

impl Registry {
    const fn new(cap: usize) -> Registry {
        Registry {
            cap,
            inner: Mutex::new((0, BTreeMap::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (u64, BTreeMap<u64, Weak<Shared>>)> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection, cutting the oldest ones beyond the cap.
    fn enter(&self, who: Weak<Shared>) -> u64 {
        let mut evicted = Vec::new();
        let id = {
            let mut g = self.lock();
            let id = g.0;
            g.0 += 1;
            g.1.insert(id, who);
            while g.1.len() > self.cap {
                if let Some((_, oldest)) = g.1.pop_first() {
                    evicted.push(oldest);
                }
            }
            id
        };
        // Outside the lock: the last reference to an evicted connection may drop here.
        for w in evicted {
            if let Some(s) = w.upgrade() {
                s.evict();
            }
        }
        id
    }

    fn leave(&self, id: u64) {
        self.lock().1.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().1.len()
    }
}

#[cfg(test)]
mod tests;

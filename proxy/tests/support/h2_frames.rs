//! HTTP/2 frames written and read by hand, so a test can send them as slowly (a byte at a
//! time) or as incompletely as an attacker would; an HTTP/2 library always sends whole
//! frames. Included with `#[path]` by the tests that need it.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client preface and an empty SETTINGS frame: what opens an h2c connection.
pub fn opening() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[]));
    v
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing (no Huffman, no dynamic table), so
/// any decoder reads it without state.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A HEADERS frame (END_HEADERS set) for `method path`, with `extra` fields; `pad` bytes of
/// an `x-pad` header make it long enough that sending it a byte at a time takes a while.
pub fn request(stream: u32, method: &str, path: &str, extra: &[(&str, &str)], end_stream: bool, pad: usize) -> Vec<u8> {
    let padding = "a".repeat(pad);
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":authority", "app.example.com"),
        (":path", path),
    ];
    fields.extend_from_slice(extra);
    if pad > 0 {
        fields.push(("x-pad", &padding));
    }
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &header_block(&fields))
}

/// Writes `bytes` one at a time, `every` apart; stops quietly when the peer has closed.
pub async fn dribble<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8], every: Duration) {
    for b in bytes {
        if w.write_all(std::slice::from_ref(b)).await.is_err() || w.flush().await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// A frame as received: type, flags, stream (the tests never look into a payload).
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

/// Reads whole frames from the server's side of a connection.
pub struct Frames<R> {
    r: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    pub fn new(r: R) -> Self {
        Frames { r, buf: Vec::new() }
    }

    /// The next frame; `None` once the connection is closed (or reset).
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16) | (usize::from(self.buf[1]) << 8) | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let stream = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]) & 0x7fff_ffff;
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream,
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.r.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until `stream` ends (a frame with END_STREAM); false if the connection closed first.
    pub async fn until_end_of(&mut self, stream: u32) -> bool {
        while let Some(f) = self.next().await {
            if f.stream == stream && (f.kind == HEADERS || f.kind == DATA) && f.flags & END_STREAM != 0 {
                return true;
            }
        }
        false
    }

    /// Reads until the server closes the connection, for at most `limit`: when it closed and
    /// when a GOAWAY arrived (both measured from `since`); `None` if still open at `limit`.
    pub async fn until_closed(&mut self, since: Instant, limit: Duration) -> Option<(Duration, Option<Duration>)> {
        let mut goaway = None;
        let watch = async {
            while let Some(f) = self.next().await {
                if f.kind == GOAWAY && goaway.is_none() {
                    goaway = Some(since.elapsed());
                }
            }
            since.elapsed()
        };
        let closed = tokio::time::timeout_at(since + limit, watch).await.ok()?;
        Some((closed, goaway))
    }
}

//! Protocol switches. The proxy can only enforce its rules on HTTP requests it parses; once a
//! connection is switched to another protocol it carries bytes the proxy never sees. An h2c
//! tunnel, for instance, lets the client send any number of HTTP/2 requests, for any path and
//! with any headers, straight to the application. So the one switch the proxy agrees to is a
//! WebSocket handshake (RFC 6455) that it has checked, on a request that has passed the
//! access rules, to an upstream that completes that same handshake. Every other `Upgrade`
//! (h2c, TLS, unknown tokens, anything on HTTP/1.0) is ignored as RFC 9110 §7.8 allows, so
//! the request is served as the plain HTTP/1.1 request it also is; CONNECT is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use sha1::{Digest, Sha1};

use crate::body::{Body, full};

/// RFC 6455 §1.3: appended to the client's key to prove the server read the handshake.
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a request may switch to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// Nothing: the request is forwarded as plain HTTP, without any `Upgrade` it carried.
    None,
    /// A well-formed WebSocket handshake. `accept` is the `Sec-WebSocket-Accept` an upstream
    /// that really ran the handshake answers with.
    WebSocket { accept: String },
}

/// A request that asks for a WebSocket but is not a valid handshake (RFC 6455 §4.2.1): it is
/// answered here, never forwarded half-understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a WebSocket handshake must be a GET request")]
    Method,
    #[error("a WebSocket handshake must carry `Connection: upgrade`")]
    Connection,
    #[error("a WebSocket handshake must carry one Sec-WebSocket-Key of 16 base64-encoded bytes")]
    Key,
    #[error("only WebSocket version 13 is supported")]
    Version,
}

/// Decides what `req` may switch to. Only HTTP/1.1 can upgrade: RFC 9110 §7.8 has a server
/// ignore `Upgrade` on HTTP/1.0, and HTTP/2 has no `Upgrade` at all.
pub fn requested<B>(req: &Request<B>) -> Result<Switch, HandshakeError> {
    let headers = req.headers();
    if req.version() != Version::HTTP_11 || !tokens(headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Ok(Switch::None);
    }
    if req.method() != Method::GET {
        return Err(HandshakeError::Method);
    }
    if !tokens(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err(HandshakeError::Connection);
    }
    let key = single(headers, header::SEC_WEBSOCKET_KEY).ok_or(HandshakeError::Key)?;
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(HandshakeError::Key);
    }
    if single(headers, header::SEC_WEBSOCKET_VERSION) != Some("13") {
        return Err(HandshakeError::Version);
    }
    Ok(Switch::WebSocket {
        accept: websocket_accept(key),
    })
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// Whether an upstream's 101 completes the WebSocket handshake the proxy sent (the checks
/// RFC 6455 §4.1 puts on a client). An upstream that switches to anything else, or says 101
/// without having read the handshake, would leave the client a tunnel the proxy never agreed
/// to, so the caller refuses it.
pub fn upstream_completed(headers: &HeaderMap, accept: &str) -> Result<(), &'static str> {
    if !tokens(headers, header::UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket")) {
        return Err("its 101 does not switch to websocket");
    }
    if !tokens(headers, header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return Err("its 101 lacks `Connection: upgrade`");
    }
    if single(headers, header::SEC_WEBSOCKET_ACCEPT) != Some(accept) {
        return Err("its 101 has no matching Sec-WebSocket-Accept");
    }
    Ok(())
}

/// The answer to a refused WebSocket handshake: 400, or 426 naming the version we speak.
pub fn refusal(e: HandshakeError) -> Response<Body> {
    let status = match e {
        HandshakeError::Version => StatusCode::UPGRADE_REQUIRED,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = text(status, format!("{e}\n"));
    if e == HandshakeError::Version {
        resp.headers_mut()
            .insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    resp
}

/// CONNECT asks the proxy to become a TCP tunnel; it is an authenticating reverse proxy,
/// never a forward proxy, so no CONNECT reaches anything.
pub fn connect_refused() -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n".into());
    resp.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    resp
}

/// Comma-separated tokens of every `name` header, trimmed, empty ones skipped.
fn tokens(headers: &HeaderMap, name: header::HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The value of a header that must appear exactly once.
fn single(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    let mut all = headers.get_all(name).into_iter();
    match (all.next(), all.next()) {
        (Some(v), None) => v.to_str().ok().map(str::trim),
        _ => None,
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri("/ws").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const HANDSHAKE: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    #[test]
    fn the_rfc_6455_example_is_a_websocket_handshake() {
        let switch = requested(&request(Version::HTTP_11, "GET", HANDSHAKE)).unwrap();
        // RFC 6455 §1.3's worked example.
        assert_eq!(
            switch,
            Switch::WebSocket {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
    }

    #[test]
    fn nothing_but_websocket_on_http_1_1_switches() {
        for (version, upgrade) in [
            (Version::HTTP_11, "h2c"),
            (Version::HTTP_11, "H2C"),
            (Version::HTTP_11, "TLS/1.2"),
            (Version::HTTP_11, "foo/1, bar"),
            (Version::HTTP_10, "websocket"),
            (Version::HTTP_10, "h2c"),
            (Version::HTTP_2, "websocket"),
        ] {
            let mut h = HANDSHAKE.to_vec();
            h[1] = ("upgrade", upgrade);
            assert_eq!(requested(&request(version, "GET", &h)), Ok(Switch::None), "{version:?} {upgrade}");
        }
    }

    #[test]
    fn malformed_websocket_handshakes_are_refused() {
        let with = |name: &str, value: Option<&'static str>| -> Vec<(&str, &str)> {
            let mut h: Vec<_> = HANDSHAKE.iter().copied().filter(|(k, _)| *k != name).collect();
            if let Some(v) = value {
                h.push((HANDSHAKE.iter().find(|(k, _)| *k == name).unwrap().0, v));
            }
            h
        };
        let post = request(Version::HTTP_11, "POST", HANDSHAKE);
        assert_eq!(requested(&post), Err(HandshakeError::Method));
        for (h, want) in [
            (with("connection", None), HandshakeError::Connection),
            (with("connection", Some("keep-alive")), HandshakeError::Connection),
            (with("sec-websocket-key", None), HandshakeError::Key),
            (with("sec-websocket-key", Some("c2hvcnQ=")), HandshakeError::Key),
            (with("sec-websocket-key", Some("not base64!!")), HandshakeError::Key),
            (with("sec-websocket-version", None), HandshakeError::Version),
            (with("sec-websocket-version", Some("8")), HandshakeError::Version),
        ] {
            assert_eq!(requested(&request(Version::HTTP_11, "GET", &h)), Err(want), "{h:?}");
        }
        let mut two_keys = HANDSHAKE.to_vec();
        two_keys.push(("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA=="));
        assert_eq!(requested(&request(Version::HTTP_11, "GET", &two_keys)), Err(HandshakeError::Key));
        assert_eq!(refusal(HandshakeError::Version).status(), 426);
        assert_eq!(refusal(HandshakeError::Key).status(), 400);
    }

    #[test]
    fn only_a_completed_websocket_handshake_is_accepted_from_upstream() {
        let accept = websocket_accept("dGhlIHNhbXBsZSBub25jZQ==");
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(*k, HeaderValue::from_static(v));
            }
            h
        };
        let good = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        ]);
        assert_eq!(upstream_completed(&good, &accept), Ok(()));
        for bad in [
            headers(&[("connection", "upgrade"), ("upgrade", "h2c")]),
            headers(&[("upgrade", "websocket"), ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")]),
            headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
            headers(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ]),
        ] {
            assert!(upstream_completed(&bad, &accept).is_err(), "{bad:?}");
        }
    }
}

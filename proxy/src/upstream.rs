//! Forwarding to upstreams: longest-prefix routing, streaming bodies both ways, WebSocket
//! upgrades (and no other protocol switch, see [`crate::upgrade`]), `static://` responses
//! and `file://` directories.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{Body, empty, full};
use crate::config::{Upstream, UpstreamTarget};
use crate::forwarded::Origin;
use crate::http_client::{HttpsConnector, https_connector, web_roots_tls_config};
use crate::upgrade::{self, Switch};

mod pool;

use pool::Pool;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream serves this path")]
    NoRoute,
    #[error("upstream {origin} is unreachable: {message}")]
    Unreachable { origin: String, message: String },
    #[error("upstream {origin} did not answer within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("upstream {origin} switched protocols without our agreement: {message}")]
    Switched { origin: String, message: &'static str },
}

pub struct Upstreams {
    routes: Vec<Upstream>,
    /// One pool per server worker ([`crate::worker::current`]): a pooled connection's
    /// task lives on the worker that opened it, so sharing pools across workers would turn
    /// every request into cross-thread wake-ups.
    pools: Vec<Pools>,
    timeout: Duration,
}

struct Pools {
    /// The `http://` upstreams (the sidecar's app): this worker's own keep-alive lists.
    h1: Vec<(url::Url, Arc<Pool>)>,
    /// `https://` upstreams.
    client: Client<HttpsConnector, Incoming>,
    /// HTTP/2 with prior knowledge for `h2c://` upstreams (gRPC without TLS).
    h2c: Client<HttpsConnector, Incoming>,
}

impl Upstreams {
    pub fn new(routes: Vec<Upstream>, timeout: Duration, workers: usize) -> Self {
        let connect_timeout = timeout.min(Duration::from_secs(10));
        let connector = https_connector(web_roots_tls_config(), connect_timeout);
        let plain: Vec<(url::Url, Authority)> = routes
            .iter()
            .filter_map(|u| match &u.target {
                UpstreamTarget::Http(url) if url.scheme() == "http" => {
                    let authority = url[url::Position::BeforeHost..url::Position::AfterPort].parse().ok()?;
                    Some((url.clone(), authority))
                }
                _ => None,
            })
            .collect();
        let pools = (0..workers.max(1))
            .map(|_| Pools {
                h1: plain
                    .iter()
                    .map(|(url, authority)| (url.clone(), Pool::new(authority.clone(), connect_timeout)))
                    .collect(),
                client: Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(256)
                    .build(connector.clone()),
                h2c: Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .http2_only(true)
                    .build(connector.clone()),
            })
            .collect();
        Upstreams { routes, pools, timeout }
    }

    /// The upstream with the longest path prefix matching `path` (routes are sorted so).
    pub fn for_path(&self, path: &str) -> Option<&Upstream> {
        self.routes.iter().find(|u| prefix_matches(&u.path, path))
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub async fn serve(
        &self,
        upstream: &Upstream,
        req: Request<Incoming>,
        peer: SocketAddr,
        origin: &Origin,
        pass_host: bool,
    ) -> Result<Response<Body>, UpstreamError> {
        match &upstream.target {
            UpstreamTarget::Static(code) => Ok(static_response(*code)),
            UpstreamTarget::File(dir) => Ok(serve_file(dir, &upstream.path, req.uri().path()).await),
            UpstreamTarget::Http(target) => self.forward(target, req, peer, origin, pass_host).await,
        }
    }

    async fn forward(
        &self,
        origin: &url::Url,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        from: &Origin,
        pass_host: bool,
    ) -> Result<Response<Body>, UpstreamError> {
        let h2c = origin.scheme() == "h2c";
        let origin_text = match origin.as_str().trim_end_matches('/').strip_prefix("h2c://") {
            Some(authority) => format!("http://{authority}"),
            None => origin.as_str().trim_end_matches('/').to_string(),
        };
        let origin_text = origin_text.as_str();
        let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: Uri = format!("{origin_text}{path_and_query}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::Unreachable {
                origin: origin_text.to_string(),
                message: e.to_string(),
            })?;
        let original_host = req
            .headers()
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        if req.method() == Method::CONNECT {
            return Ok(upgrade::connect_refused());
        }
        // An h2c upstream speaks HTTP/2, where there is no `Upgrade` to pass on.
        let switch = match upgrade::requested(&req) {
            Ok(_) if h2c => Switch::None,
            Ok(switch) => switch,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket handshake refused");
                return Ok(upgrade::refusal(e));
            }
        };
        let websocket = match switch {
            Switch::WebSocket { accept } => Some((accept, hyper::upgrade::on(&mut req))),
            Switch::None => None,
        };

        let headers = req.headers_mut();
        // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
        let te_trailers = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        // The headers `Connection` named went on arrival (`headers::remove_connection_nominated`),
        // before the proxy set its own; reading it again here would let it delete those.
        crate::headers::remove_all_spellings(headers, crate::headers::HOP_BY_HOP);
        if te_trailers && h2c {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if websocket.is_some() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        // A trusted front end's chain is extended; an untrusted peer's was removed on
        // arrival (`Origin::read`), so the chain starts at the peer.
        append_forwarded_for(headers, peer);
        headers.insert(HeaderName::from_static("x-forwarded-proto"), HeaderValue::from_static(from.scheme));
        if let Some(host) = from
            .host
            .as_deref()
            .and_then(|h| HeaderValue::from_str(h).ok())
            .or(original_host.clone())
        {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        match (&original_host, pass_host) {
            (Some(host), true) => {
                headers.insert(header::HOST, host.clone());
            }
            _ => {
                headers.remove(header::HOST);
            }
        }
        let pools = &self.pools[crate::worker::current() % self.pools.len()];
        let unreachable = |e: &(dyn std::error::Error + 'static)| UpstreamError::Unreachable {
            origin: origin_text.to_string(),
            message: crate::http_client::error_chain(e),
        };
        let sent = async {
            if let Some((_, pool)) = pools.h1.iter().find(|(u, _)| u == origin) {
                *req.uri_mut() = pool::origin_form(&uri);
                *req.version_mut() = Version::HTTP_11;
                return pool.send(req).await.map(boxed).map_err(|e| unreachable(&e));
            }
            *req.uri_mut() = uri;
            let client = if h2c {
                *req.version_mut() = Version::HTTP_2;
                &pools.h2c
            } else {
                *req.version_mut() = Version::HTTP_11;
                &pools.client
            };
            client.request(req).await.map(boxed).map_err(|e| unreachable(&e))
        };
        let response = tokio::time::timeout(self.timeout, sent)
            .await
            .map_err(|_| UpstreamError::Timeout {
                origin: origin_text.to_string(),
                timeout: self.timeout,
            })??;

        // Relaying any other 101 would hand the client a tunnel to the app (hyper has already
        // switched the upstream connection, which dropping the response closes).
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let switched = |message| UpstreamError::Switched {
                origin: origin_text.to_string(),
                message,
            };
            let Some((accept, client)) = websocket else {
                return Err(switched("it answered 101 to a request that asked for no protocol switch"));
            };
            upgrade::upstream_completed(response.headers(), &accept).map_err(switched)?;
            return Ok(switch_protocols(response, client));
        }
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop_response(&mut parts.headers);
        Ok(Response::from_parts(parts, body))
    }

    /// Closes this worker's idle upstream connections (a quiet worker handing back memory).
    pub fn close_idle(&self) {
        if let Some(pools) = self.pools.get(crate::worker::current() % self.pools.len()) {
            for (_, pool) in &pools.h1 {
                pool.clear();
            }
        }
    }
}

/// An upstream response with its body as the proxy's body type (the connection upgrade,
/// kept in the extensions, goes along).
fn boxed<B>(resp: Response<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + 'static,
{
    resp.map(|b| b.map_err(Into::into).boxed_unsync())
}

/// Joins the two upgraded connections once both sides have switched protocols.
fn switch_protocols(mut upstream: Response<Body>, client: hyper::upgrade::OnUpgrade) -> Response<Body> {
    let upstream_upgrade = hyper::upgrade::on(&mut upstream);
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream_upgrade) {
            Ok((c, u)) => {
                let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    tracing::debug!(error = %e, "upgraded connection closed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "protocol upgrade failed"),
        }
    });
    let (mut parts, _) = upstream.into_parts();
    remove_hop_by_hop_response(&mut parts.headers);
    parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    Response::from_parts(parts, empty())
}

/// An upstream response's hop-by-hop headers, with those its `Connection` names. The proxy
/// sets its own response headers after this.
fn remove_hop_by_hop_response(headers: &mut HeaderMap) {
    for name in crate::headers::connection_named(headers) {
        headers.remove(name);
    }
    for name in &crate::headers::HOP_BY_HOP_NAMES {
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_canonical().to_string();
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
}

pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) && (prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

fn static_response(code: u16) -> Response<Body> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    let mut resp = Response::new(full(status.canonical_reason().unwrap_or("OK").to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Maps a request path below `prefix` to a file below `dir`, refusing anything that could
/// leave `dir` (`..`, encoded separators, NUL).
pub fn file_path(dir: &Path, prefix: &str, request_path: &str) -> Option<PathBuf> {
    let rest = request_path.strip_prefix(prefix.trim_end_matches('/'))?;
    let decoded = percent_encoding::percent_decode_str(rest).decode_utf8().ok()?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return None;
    }
    let mut out = dir.to_path_buf();
    for c in Path::new(decoded.trim_start_matches('/')).components() {
        match c {
            Component::Normal(seg) => out.push(seg),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

async fn serve_file(dir: &Path, prefix: &str, request_path: &str) -> Response<Body> {
    let not_found = || {
        let mut r = Response::new(full("404 page not found\n"));
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    };
    let Some(mut path) = file_path(dir, prefix, request_path) else {
        return not_found();
    };
    if tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_dir()) {
        path.push("index.html");
    }
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return not_found();
    };
    let Ok(meta) = file.metadata().await else { return not_found() };
    if !meta.is_file() {
        return not_found();
    }
    let stream = tokio_util::io::ReaderStream::new(file);
    let body = http_body_util::StreamBody::new(futures_util::TryStreamExt::map_ok(stream, hyper::body::Frame::data));
    let mut resp = Response::new(BodyExt::map_err(body, Into::into).boxed_unsync());
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    resp
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("wasm") => "application/wasm",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths are normalized before routing, so a `..` should never get here; the file
    /// upstream refuses it anyway (defence in depth).
    #[test]
    fn file_paths_never_leave_the_directory() {
        let dir = Path::new("/srv/www");
        assert_eq!(
            file_path(dir, "/static/", "/static/a/b.txt"),
            Some(PathBuf::from("/srv/www/a/b.txt"))
        );
        for bad in [
            "/static/../etc/passwd",
            "/static/%2e%2e/etc/passwd",
            "/static/..%2fetc/passwd",
            "/static/a%5c..%5cb",
            "/static/a%00b",
            "/other/a.txt",
        ] {
            assert_eq!(file_path(dir, "/static/", bad), None, "{bad}");
        }
    }
}

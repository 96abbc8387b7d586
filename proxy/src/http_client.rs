//! Outbound HTTPS to the identity provider: one pooled hyper client with rustls (built-in
//! web roots plus `provider_ca_files`), bounded time and bounded response size.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Discovery documents, JWKS and token responses are small; anything larger is refused.
const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("request to {url} timed out after {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("response from {url} is larger than {MAX_RESPONSE} bytes")]
    TooLarge { url: String },
}

/// A CA file that cannot be trusted: unreadable, not PEM, or a certificate rustls refuses.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("{path}: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("{path}: no PEM certificates found")]
    Empty { path: PathBuf },
    #[error("{path}: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

pub type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Result<http::Response<Vec<u8>>, HttpError>> + Send>>;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector, Full<Bytes>>,
    timeout: Duration,
}

/// A rustls client config trusting the built-in web roots.
pub fn web_roots_tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth()
}

/// A rustls client config trusting the built-in web roots and the given PEM files.
pub fn tls_config(extra_ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, CaFileError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_ca_files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| CaFileError::Unreadable {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(CaFileError::Empty { path: path.clone() });
        }
        for cert in certs {
            roots.add(cert).map_err(|source| CaFileError::Refused {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

pub fn https_connector(tls: rustls::ClientConfig, connect_timeout: Duration) -> HttpsConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

impl HttpClient {
    pub fn new(extra_ca_files: &[PathBuf], timeout: Duration) -> Result<Self, CaFileError> {
        let connector = https_connector(tls_config(extra_ca_files)?, timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(HttpClient { client, timeout })
    }

    pub async fn send(&self, request: http::Request<Vec<u8>>) -> Result<http::Response<Vec<u8>>, HttpError> {
        let url = redact_query(request.uri());
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let work = async {
            let response = self.client.request(request).await.map_err(|e| HttpError::Transport {
                url: url.clone(),
                message: error_chain(&e),
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect().await.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    HttpError::TooLarge { url: url.clone() }
                } else {
                    HttpError::Transport {
                        url: url.clone(),
                        message: e.to_string(),
                    }
                }
            })?;
            Ok(http::Response::from_parts(parts, body.to_bytes().to_vec()))
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| HttpError::Timeout {
            url: url.clone(),
            timeout: self.timeout,
        })?
    }

    /// The shape openidconnect's request builders take.
    pub fn as_oauth2(&self) -> impl Fn(http::Request<Vec<u8>>) -> ResponseFuture + Send + Sync {
        let this = Arc::new(self.clone());
        move |req| {
            let this = this.clone();
            Box::pin(async move { this.send(req).await })
        }
    }
}

/// Query strings may carry codes or tokens; logs get the URL without them.
fn redact_query(uri: &http::Uri) -> String {
    let mut s = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    );
    if uri.query().is_some() {
        s.push_str("?…");
    }
    s
}

/// `a: b: c` from an error and its sources, which is where hyper keeps the useful part.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

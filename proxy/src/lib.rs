//! sidekey-proxy: an OpenID Connect authenticating reverse proxy and forward-auth endpoint
//! that reads oauth2-proxy's configuration unchanged.
//!
//! A browser without a session is sent through the provider's authorization-code flow
//! (state, nonce, PKCE); the result is an encrypted session cookie. Requests with a valid,
//! authorized session are forwarded to the upstream with identity headers; client-sent
//! copies of those headers are always stripped first.
//!
//! Layout: [`config`] (options, loading, validation) · [`session`] (codec, cookies) ·
//! [`redirect`] (the one redirect validator) · [`authz`] (who may sign in) · [`headers`]
//! (identity headers) · [`oidc`] (the relying party) · [`upstream`] (forwarding) ·
//! [`client_auth`] (secrets and JWT assertions) · [`entra`] (Entra ID specifics) · [`refresh`] (single-flight token refresh) ·
//! [`app`] (the request path) · [`server`] (listener, shutdown) · [`pages`] (HTML).

#![forbid(unsafe_code)]

pub mod app;
pub mod authz;
pub mod bearer;
pub mod body;
pub mod client_auth;
pub mod config;
pub mod entra;
pub mod forwarded;
pub mod headers;
pub mod http_client;
pub mod logging;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod redirect;
pub mod refresh;
pub mod routes;
pub mod secret;
pub mod server;
pub mod session;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// Timeout for each request to the identity provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the proxy from a validated config and serves `listener` until `shutdown`
/// resolves. Discovery runs in the background; the listener serves from the start.
pub async fn run(
    cfg: config::Config,
    listener: TcpListener,
    clock: oidc::Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http =
        http_client::HttpClient::new(&cfg.provider.ca_files, PROVIDER_TIMEOUT).map_err(|e| anyhow::anyhow!("provider_ca_files: {e}"))?;
    let oidc = Arc::new(oidc::Oidc::new(cfg.provider.clone(), http.clone(), clock.clone()));
    let cfg_metrics = cfg.metrics_address;
    let cfg_https = cfg.https.clone();
    tracing::info!(client_authentication = %cfg.provider.client_auth.describe(), "client credential");
    let bearer = cfg.jwt_bearer.as_ref().map(|extra| {
        let mut issuers = vec![oidc.clone()];
        for (issuer, audience) in extra {
            let mut p = cfg.provider.clone();
            p.issuer_url = issuer.clone();
            p.client_id = audience.clone();
            p.extra_audiences = vec![];
            p.entra = None;
            p.skip_discovery = false;
            p.client_auth = client_auth::ClientAuth::None;
            issuers.push(Arc::new(oidc::Oidc::new(p, http.clone(), clock.clone())));
        }
        bearer::BearerVerifier::new(issuers)
    });
    let mut app = app::App::new(cfg, oidc.clone(), clock).map_err(anyhow::Error::msg)?;
    app.set_bearer(bearer);
    let app = Arc::new(app);
    app.credential_usable();
    let metrics = match cfg_metrics {
        Some(addr) => {
            let l = metrics::bind(addr).await.map_err(anyhow::Error::msg)?;
            tracing::info!(address = %addr, "metrics on /metrics");
            Some(tokio::spawn(metrics::serve(l)))
        }
        None => None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let https = match &cfg_https {
        Some((addr, settings)) => {
            let cert = tls::ReloadingCert::new(settings.clone()).map_err(|e| anyhow::anyhow!("option `tls_cert_file`: {e}"))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config().map_err(anyhow::Error::msg)?));
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("option `https_address`: cannot listen on {addr}: {e}"))?;
            tracing::info!(address = %addr, "sidekey-proxy listening for HTTPS");
            let reload = tokio::spawn(cert.watch());
            let serving = tokio::spawn(server::serve(l, app.clone(), Some(acceptor), stop.clone().cancelled_owned()));
            Some((serving, reload))
        }
        None => None,
    };
    let discovery = tokio::spawn(oidc.discover_until_ready());
    let http_stop = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        http_stop.cancel();
    });
    server::serve(listener, app, None, stop.cancelled()).await;
    if let Some((serving, reload)) = https {
        let _ = serving.await;
        reload.abort();
    }
    discovery.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(())
}

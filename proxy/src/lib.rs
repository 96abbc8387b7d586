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
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

/// Timeout for each request to the identity provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the proxy from a validated config and serves `listener` until `shutdown`
/// resolves. Discovery runs in the background; the listener serves from the start.
pub async fn run(cfg: config::Config, listener: TcpListener, clock: oidc::Clock, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let http =
        http_client::HttpClient::new(&cfg.provider.ca_files, PROVIDER_TIMEOUT).map_err(|e| anyhow::anyhow!("provider_ca_files: {e}"))?;
    let oidc = Arc::new(oidc::Oidc::new(cfg.provider.clone(), http, clock.clone()));
    let cfg_metrics = cfg.metrics_address;
    tracing::info!(client_authentication = %cfg.provider.client_auth.describe(), "client credential");
    let app = Arc::new(app::App::new(cfg, oidc.clone(), clock).map_err(anyhow::Error::msg)?);
    app.credential_usable();
    let metrics = match cfg_metrics {
        Some(addr) => {
            let l = metrics::bind(addr).await.map_err(anyhow::Error::msg)?;
            tracing::info!(address = %addr, "metrics on /metrics");
            Some(tokio::spawn(metrics::serve(l)))
        }
        None => None,
    };
    let discovery = tokio::spawn(oidc.discover_until_ready());
    server::serve(listener, app, shutdown).await;
    discovery.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(())
}

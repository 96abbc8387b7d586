//! Start-up: builds the proxy from a validated config (the provider client, the app, the
//! metrics and HTTPS listeners) and runs one worker per listener until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::{app, bearer, client_auth, config, http_client, metrics, oidc, server, tls, worker};

/// One worker's listeners, served until `stop`.
async fn serve_worker(
    app: Arc<app::App>,
    http: std::net::TcpListener,
    https: Option<std::net::TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: tokio_util::sync::CancellationToken,
) {
    let listen = |l: std::net::TcpListener| TcpListener::from_std(l).expect("a nonblocking listener from server::bind");
    let plain = server::serve(listen(http), app.clone(), None, stop.clone().cancelled_owned());
    match (https, tls) {
        (Some(l), Some(tls)) => {
            tokio::join!(plain, server::serve(listen(l), app, Some(tls), stop.cancelled_owned()));
        }
        _ => plain.await,
    }
}

/// Why the proxy could not start serving, each naming the option to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("option `provider_ca_files`: {0}")]
    ProviderCa(#[from] http_client::CaFileError),
    #[error("option `authenticated_emails_file`: cannot read {path}: {source}")]
    EmailsFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the Redis session store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("option `metrics_address`: cannot listen on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("option `tls_cert_file`: {0}")]
    KeyPair(#[from] tls::KeyPairError),
    #[error("options `tls_min_version` and `tls_cipher_suites`: {0}")]
    Tls(String),
    #[error("option `https_address`: cannot listen on {addr}: {source}")]
    Https {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no listener to serve")]
    NoListener,
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Timeout for each request to the identity provider.
pub const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the proxy from a validated config and serves `listeners` (from
/// [`server::bind`]) until `shutdown` resolves: the first on the caller's runtime, each other
/// one on a worker thread of its own with a single-threaded runtime. Discovery and the other
/// background tasks run on the caller's runtime; the listeners serve from the start.
pub async fn run(
    cfg: config::Config,
    listeners: Vec<std::net::TcpListener>,
    clock: oidc::Clock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let workers = listeners.len().max(1);
    let http = http_client::HttpClient::new(&cfg.provider.ca_files, PROVIDER_TIMEOUT)?;
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
    let mut app = app::App::new(cfg, oidc.clone(), clock, workers)?;
    app.set_bearer(bearer);
    let app = Arc::new(app);
    app.credential_usable();
    let metrics = match cfg_metrics {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Metrics { addr, source })?;
            tracing::info!(address = %addr, "metrics on /metrics");
            Some(tokio::spawn(metrics::serve(l)))
        }
        None => None,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let (tls, reload) = match &cfg_https {
        Some((_, settings)) => {
            let cert = tls::ReloadingCert::new(settings.clone())?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config().map_err(StartError::Tls)?));
            (Some(acceptor), Some(tokio::spawn(cert.watch())))
        }
        None => (None, None),
    };
    let mut https_listeners: Vec<Option<std::net::TcpListener>> = match &cfg_https {
        Some((addr, _)) => {
            let ls = server::bind(*addr, workers).map_err(|source| StartError::Https { addr: *addr, source })?;
            tracing::info!(address = %addr, "sidekey-proxy listening for HTTPS");
            ls.into_iter().map(Some).collect()
        }
        None => (0..workers).map(|_| None).collect(),
    };
    let mut listeners = listeners.into_iter();
    let first = listeners.next().ok_or(StartError::NoListener)?;
    let first_https = https_listeners.remove(0);
    let mut finished = Vec::new();
    // A worker's runtime also drives connections other workers use (a Redis connection,
    // pooled connections to the provider): it stays up until every worker has drained.
    let all_drained = tokio_util::sync::CancellationToken::new();
    for (index, (http, https)) in listeners.zip(https_listeners).enumerate() {
        let (app, tls, stop, all_drained) = (app.clone(), tls.clone(), stop.clone(), all_drained.clone());
        let (done, finished_rx) = tokio::sync::oneshot::channel::<()>();
        finished.push(finished_rx);
        std::thread::Builder::new()
            .name(format!("sidekey-worker-{}", index + 1))
            .spawn(move || {
                worker::set_current(index + 1);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    serve_worker(app, http, https, tls, stop).await;
                    let _ = done.send(());
                    all_drained.cancelled().await;
                });
            })
            .map_err(StartError::Thread)?;
    }
    let http_stop = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        http_stop.cancel();
    });
    let discovery = tokio::spawn(oidc.discover_until_ready());
    serve_worker(app, first, first_https, tls, stop).await;
    for f in finished {
        let _ = f.await;
    }
    all_drained.cancel();
    if let Some(reload) = reload {
        reload.abort();
    }
    discovery.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(())
}

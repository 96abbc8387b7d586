use std::process::ExitCode;

/// mimalloc instead of glibc malloc: a proxy allocates and frees many small buffers per
/// request across threads, where glibc's arenas cost ~10% of the CPU in profiles and keep
/// the peak heap after a load burst; mimalloc returns freed pages to the OS.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use sidekey_proxy::config::{self, Config, LoadError};
use sidekey_proxy::{logging, oidc, server};

fn main() -> ExitCode {
    rustls::crypto::ring::default_provider()
        .install_default()
        .expect("no other crypto provider is installed");
    let invocation = match config::load(std::env::args_os(), std::env::vars()) {
        Ok(i) => i,
        Err(LoadError::Cli(e)) => e.exit(),
        Err(LoadError::Config(e)) => return fail(&e),
    };
    let cfg = match Config::from_values(&invocation.values) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // The same log set-up and warnings for --config-test as for a start, so that a test run
    // shows exactly what the start would.
    logging::init(cfg.logging.format, cfg.logging.standard);
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if invocation.strict && !cfg.warnings.is_empty() {
        return fatal(
            2,
            format!(
                "--strict: {} start-up warning(s) above; fix them, or drop --strict",
                cfg.warnings.len()
            ),
        );
    }
    if invocation.config_test {
        println!(
            "configuration OK: provider {}, issuer {}, client {} authenticated by {}, {} upstream(s), listening on {}",
            if cfg.provider.entra.is_some() { "entra-id" } else { "oidc" },
            cfg.provider.issuer_url,
            cfg.provider.client_id,
            cfg.provider.client_auth.describe(),
            cfg.upstreams.len(),
            cfg.http_address
        );
        return ExitCode::SUCCESS;
    }
    if let Some((from, to)) = raise_open_file_limit() {
        tracing::debug!(from, to, "raised the open-file soft limit to the hard limit");
    }
    server::on_idle(|| {
        // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own structures
        // for the calling thread (and, forced, returns every free page it can to the OS).
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    let workers = server::worker_count(cfg.workers);
    let listeners = match server::bind(cfg.http_address, workers) {
        Ok(l) => l,
        Err(e) => {
            return fatal(1, format!("option `http_address`: cannot listen on {}: {e}", cfg.http_address));
        }
    };
    // This thread is worker 0 and also runs the background tasks; see `server`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        tracing::info!(address = %cfg.http_address, workers, version = env!("CARGO_PKG_VERSION"), "sidekey-proxy listening");
        match sidekey_proxy::run(cfg, listeners, oidc::system_clock(), shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fatal(1, format!("{e:#}")),
        }
    })
}

/// Every proxied request holds two sockets, so the common soft limit of 1024 open files caps
/// a proxy at a few hundred clients. Raise the soft limit to the hard one, as Go's runtime
/// and nginx's `worker_rlimit_nofile` do; the hard limit stays the operator's choice.
fn raise_open_file_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return None;
        }
        let from = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        (libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0).then_some((from, lim.rlim_max))
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    fatal(2, format!("invalid configuration: {e}"))
}

/// Where Kubernetes reads a container's last words (`terminationMessagePath`). The file
/// exists only where the kubelet mounted it, and is never created here.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Ends the process with `message` on stderr and, in a pod, in the termination log: then
/// `kubectl describe pod` and the controller's policy status show the proxy's own error
/// line instead of a bare CrashLoopBackOff.
fn fatal(code: u8, message: String) -> ExitCode {
    let line = format!("sidekey-proxy: {message}");
    eprintln!("{line}");
    let path = std::env::var_os("SIDEKEY_TERMINATION_LOG").unwrap_or_else(|| TERMINATION_LOG.into());
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).truncate(true).open(path) {
        let _ = std::io::Write::write_all(&mut f, line.as_bytes());
    }
    ExitCode::from(code)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received");
}

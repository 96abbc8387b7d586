//! End-to-end: the HTTPS listener (rustls), ALPN, minimum version, certificate files
//! reloaded on change without dropping open connections, and slow h2 heads over TLS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::support::h2_frames;
use crate::support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

fn client_config(cas: &[&Path], tls12_only: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS12, &rustls::version::TLS13]
    };
    let mut cfg = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(port: u16, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
}

/// The first connection to a proxy that has just been started: retried for up to 2 s while
/// its listener comes up.
async fn first_connection(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Tls {
    for _ in 0..100 {
        if let Ok(s) = connect(port, cfg.clone()).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("HTTPS listener not up on port {port} after 2 s");
}

/// `GET /ping` over HTTP/2 on an established TLS connection: status and protocol version.
async fn h2_ping(s: Tls, port: u16) -> (u16, http::Version) {
    let (mut h2, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://127.0.0.1:{port}/ping"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    (resp.status().as_u16(), resp.version())
}

/// The common name of the certificate the server presented.
fn peer_name(s: &Tls) -> String {
    let der = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    // Good enough for a test: the CN is the last printable run before the validity dates.
    let text = String::from_utf8_lossy(&der).to_string();
    ["first", "second"]
        .iter()
        .find(|n| text.contains(*n))
        .map(|n| n.to_string())
        .unwrap_or_default()
}

async fn get_ping(s: &mut Tls) -> String {
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// A proxy serving HTTPS on a free port with these files (no provider needed for /ping).
async fn start_https(cert: &Path, key: &Path, extra: &[&str]) -> (Proxy, u16) {
    let (args, port) = https_args(cert, key, extra);
    (Proxy::start(Proxy::bind().await, &args).await, port)
}

/// The flags of a proxy serving HTTPS on a free port, and that port.
fn https_args(cert: &Path, key: &Path, extra: &[&str]) -> (Vec<String>, u16) {
    let port = free_port();
    let https = format!("--https-address=127.0.0.1:{port}");
    let cert = format!("--tls-cert-file={}", cert.display());
    let key = format!("--tls-key-file={}", key.display());
    let mut flags = vec![
        https.as_str(),
        &cert,
        &key,
        "--skip-oidc-discovery",
        "--login-url=http://127.0.0.1:1/a",
        "--redeem-url=http://127.0.0.1:1/t",
        "--oidc-jwks-url=http://127.0.0.1:1/k",
    ];
    flags.extend_from_slice(extra);
    (Proxy::args("http://127.0.0.1:1/", "static://200", &flags), port)
}

fn copy_pair(from: (&Path, &Path), to: &Path) {
    // Like a Secret update: write new files, then move them into place.
    std::fs::copy(from.0, to.join("tls.crt.new")).unwrap();
    std::fs::copy(from.1, to.join("tls.key.new")).unwrap();
    std::fs::rename(to.join("tls.key.new"), to.join("tls.key")).unwrap();
    std::fs::rename(to.join("tls.crt.new"), to.join("tls.crt")).unwrap();
}

#[tokio::test]
async fn https_with_alpn_and_hot_reload_that_keeps_open_connections() {
    install_crypto();
    let (a, b, live) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (ca_a, cert_a, key_a) = tls_files(a.path(), "first");
    let (ca_b, cert_b, key_b) = tls_files(b.path(), "second");
    copy_pair((&cert_a, &key_a), live.path());

    let (_proxy, port) = start_https(&live.path().join("tls.crt"), &live.path().join("tls.key"), &[]).await;
    let trust_both = client_config(&[&ca_a, &ca_b], false);
    let first = first_connection(port, &trust_both).await;
    assert_eq!(peer_name(&first), "first");
    assert_eq!(first.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 offered by ALPN");
    assert_eq!(h2_ping(first, port).await, (200, http::Version::HTTP_2), "h2 over TLS");

    let mut h1 = connect(port, {
        let mut c = (*client_config(&[&ca_a, &ca_b], false)).clone();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    })
    .await
    .unwrap();
    assert!(get_ping(&mut h1).await.starts_with("HTTP/1.1 200"));

    // Replace the files: new handshakes get the new certificate, the open connection lives on.
    copy_pair((&cert_b, &key_b), live.path());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = connect(port, trust_both.clone()).await.unwrap();
        if peer_name(&s) == "second" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "certificate not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        get_ping(&mut h1).await.starts_with("HTTP/1.1 200"),
        "the connection opened before the reload still works"
    );
}

#[test]
fn a_broken_update_keeps_the_working_certificate() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = tls_files(dir.path(), "first");
    let reloading = sidekey_proxy::tls::ReloadingCert::new(sidekey_proxy::tls::TlsSettings {
        cert_file: cert.clone(),
        key_file: key.clone(),
        tls13_only: false,
        cipher_suites: vec![],
    })
    .unwrap();
    assert!(!reloading.reload_if_changed(), "nothing changed");
    let before = reloading.server_config().unwrap();
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(!reloading.reload_if_changed(), "a broken pair is not taken");
    // The server still has a certificate to present.
    let after = reloading.server_config().unwrap();
    assert_eq!(before.alpn_protocols, after.alpn_protocols);
    let dir2 = tempfile::tempdir().unwrap();
    let (_, cert2, key2) = tls_files(dir2.path(), "second");
    std::fs::copy(cert2, &cert).unwrap();
    std::fs::copy(key2, &key).unwrap();
    assert!(reloading.reload_if_changed(), "a fixed pair is taken");
}

#[tokio::test]
async fn minimum_version_tls13_refuses_tls12_clients() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path(), "first");
    let (_proxy, port) = start_https(&cert, &key, &["--tls-min-version=TLS1.3"]).await;
    let mut ok = None;
    for _ in 0..100 {
        if let Ok(s) = connect(port, client_config(&[&ca], false)).await {
            ok = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = ok.expect("TLS 1.3 handshake");
    assert_eq!(s.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(connect(port, client_config(&[&ca], true)).await.is_err(), "TLS 1.2 refused");
}

/// h2 over TLS (ALPN), a HEADERS frame sent a byte every 200 ms on each of a few
/// connections: cut at the request-head deadline, counted from the TCP connect (the
/// handshake is part of it), like h2c and HTTP/1.1. Before the fix they stayed open for good.
#[tokio::test]
async fn h2_over_tls_slow_headers_are_cut_at_the_head_deadline() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path(), "first");
    let (args, port) = https_args(&cert, &key, &[]);
    let _proxy = Proxy::start_short_deadlines(Proxy::bind().await, &args).await;
    let cfg = client_config(&[&ca], false);
    let ready = first_connection(port, &cfg).await;

    let mut conns = Vec::new();
    for _ in 0..10 {
        let cfg = cfg.clone();
        conns.push(tokio::spawn(async move {
            let since = tokio::time::Instant::now();
            let s = connect(port, cfg).await.unwrap();
            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (r, mut w) = tokio::io::split(s);
            w.write_all(&h2_frames::opening()).await.unwrap();
            let slow = h2_frames::request(1, "GET", "/ping", &[], true, 200);
            let drip = tokio::spawn(async move { h2_frames::dribble(&mut w, &slow, Duration::from_millis(200)).await });
            let closed = h2_frames::Frames::new(r)
                .until_closed(since, SHORT_HEAD_DEADLINE + Duration::from_secs(10))
                .await;
            drip.abort();
            closed
        }));
    }
    // A real h2 client is served meanwhile.
    assert_eq!(h2_ping(ready, port).await.0, 200);

    for c in conns {
        let (closed, _) = c.await.unwrap().expect("still open at the deadline and 10 s more");
        assert!(
            closed >= SHORT_HEAD_DEADLINE - Duration::from_secs(1) && closed < SHORT_HEAD_DEADLINE + Duration::from_secs(4),
            "closed at {closed:?}, not at the head deadline"
        );
        eprintln!("h2 over TLS: closed after {closed:?}");
    }
}

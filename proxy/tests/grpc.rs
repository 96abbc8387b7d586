//! End-to-end: a gRPC-shaped exchange (HTTP/2, `te: trailers`, response trailers) from an
//! h2c client through the proxy to an `h2c://` upstream (oauth2-proxy#3277).

use std::convert::Infallible;

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An h2c-only server answering like a gRPC service, reporting what it received in a
/// response header.
async fn grpc_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let seen = format!(
                        "version={:?};te={};ct={};user={};cookie={}",
                        req.version(),
                        req.headers().get("te").map(|v| v.to_str().unwrap()).unwrap_or("-"),
                        req.headers().get("content-type").map(|v| v.to_str().unwrap()).unwrap_or("-"),
                        req.headers().get("x-forwarded-email").map(|v| v.to_str().unwrap()).unwrap_or("-"),
                        req.headers().get("cookie").is_some(),
                    );
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    trailers.insert("grpc-message", "ok".parse().unwrap());
                    let frames = vec![Ok::<_, Infallible>(Frame::data(body)), Ok(Frame::trailers(trailers))];
                    let resp = Response::builder()
                        .header("content-type", "application/grpc")
                        .header("x-seen", seen)
                        .body(StreamBody::new(futures_util::stream::iter(frames)))
                        .unwrap();
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("h2c://{addr}/")
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers_and_identity() {
    let upstream = grpc_upstream().await;
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], serde_json::json!({}));
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream, &["--api-route=^/helloworld\\."])).await;
    let client = browser();
    let resp = login(&client, &proxy.url, "/", "alice", "alice-password").await;
    let cookie = format!("_oauth2_proxy={}", set_cookie_value(&resp, "_oauth2_proxy").unwrap());

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let call = |cookie: Option<&str>| {
        let mut b = Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/helloworld.Greeter/SayHello"))
            .version(Version::HTTP_2)
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b.body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello"))).unwrap()
    };

    let resp = sender.send_request(call(Some(&cookie))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = resp.headers()["x-seen"].to_str().unwrap().to_string();
    assert_eq!(
        seen, "version=HTTP/2.0;te=trailers;ct=application/grpc;user=alice@example.com;cookie=false",
        "HTTP/2 upstream with te: trailers and identity, without the proxy's cookie"
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x05hello"));

    // Without a session, an API route answers 401 instead of a sign-in page.
    let resp = sender.send_request(call(None)).await.unwrap();
    assert_eq!(resp.status(), 401);
    drop(idp);
}

//! A real browser (Debian's chromium, driven by playwright-core) signs in through the
//! proxy's sign-in page, the real IdP's login and consent forms, and lands on the app.

use crate::support::*;

#[tokio::test]
async fn chromium_signs_in_and_sees_the_app() {
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "chromium is missing: run `make test` (it installs the test peers)"
    );
    let listener = Proxy::bind().await;
    let callback = format!("http://{}/oauth2/callback", listener.local_addr().unwrap());
    let idp = Idp::start(&[callback], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(listener, &Proxy::args(&idp.issuer, &upstream.url, &[])).await;
    let target = format!("{}/dashboard", proxy.url);
    let script = repo_root().join("tests/browser/login.mjs");
    let args = [target.clone(), "alice".into(), "alice-password".into(), "alice@example.com".into()];
    // The proxy runs on this test's runtime: wait for the browser off it.
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("node").arg(script).args(args).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser login failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["finalUrl"], target);
    assert!(result["cookies"].as_array().unwrap().iter().any(|c| c == "_oauth2_proxy"));
}

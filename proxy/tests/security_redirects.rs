//! Open redirects: every payload of `tests/data/open_redirects.jsonl` (419, one per
//! oauth2-proxy advisory class and the usual tricks; `gen_open_redirects.py` writes it) at
//! every entry point a client controls, against the real proxy and OpenID provider. Each
//! must fall back to the local `/`; the targets of `good_redirects.jsonl` must still work.
//!
//! Entry points: `/oauth2/start?rd=` (the target sealed into the CSRF cookie, opened here
//! with the proxy's own codec), `/oauth2/sign_in?rd=` (the page's hidden field),
//! `/oauth2/sign_out?rd=` (Location), `X-Auth-Request-Redirect` from a trusted front end
//! on start and sign-out, and the post-logout redirect sent to the provider
//! (`--oidc-logout`).

use std::collections::BTreeSet;

use crate::support::*;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sidekey_proxy::config::{Config, load};
use sidekey_proxy::session::LoginState;
use sidekey_proxy::session::codec::{Purpose, Sealer};

/// Loopback is a trusted front end by default, so `X-Auth-Request-Redirect` is honoured.
const FLAGS: [&str; 3] = [
    "--whitelist-domain=.example.com",
    "--whitelist-domain=exact.org:8443",
    "--reverse-proxy",
];

fn corpus(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("proxy/tests/data").join(file)).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["class"].as_str().unwrap_or("good").to_string(),
                v["payload"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

struct Env {
    _idp: Idp,
    _upstream: Upstream,
    proxy: Proxy,
    csrf: Sealer,
    client: reqwest::Client,
}

async fn setup(extra: &[&str]) -> Env {
    let listener = Proxy::bind().await;
    let addr = listener.local_addr().unwrap();
    let idp = Idp::start(&[format!("http://{addr}/oauth2/callback")], serde_json::json!({}));
    let upstream = Upstream::start().await;
    let mut flags: Vec<&str> = FLAGS.to_vec();
    flags.extend_from_slice(extra);
    let args = Proxy::args(&idp.issuer, &upstream.url, &flags);
    let mut argv = vec!["sidekey-proxy".to_string()];
    argv.extend(args.iter().cloned());
    let cfg = Config::from_values(&load(argv, Vec::new()).unwrap().values).unwrap();
    let csrf = Sealer::new(cfg.cookie.secret.expose(), Purpose::Csrf);
    let proxy = Proxy::start(listener, &args).await;
    Env {
        _idp: idp,
        _upstream: upstream,
        proxy,
        csrf,
        client: browser(),
    }
}

impl Env {
    /// The target `/oauth2/start` sealed for after the login.
    async fn start_target(&self, query: &str, header: Option<&str>) -> String {
        let mut req = self.client.get(format!("{}/oauth2/start{query}", self.proxy.url));
        if let Some(h) = header {
            req = req.header("X-Auth-Request-Redirect", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 302, "start {query}");
        let sealed = set_cookie_value(&resp, "_oauth2_proxy_csrf").expect("a CSRF cookie");
        let login: LoginState = self.csrf.open("_oauth2_proxy_csrf", &sealed).expect("our own CSRF cookie opens");
        login.redirect
    }

    async fn sign_in_target(&self, query: &str) -> String {
        let resp = self
            .client
            .get(format!("{}/oauth2/sign_in{query}", self.proxy.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "sign_in {query}");
        let body = resp.text().await.unwrap();
        let field = body.split("name=\"rd\" value=\"").nth(1).expect("the rd field");
        html_unescape(&field[..field.find('"').unwrap()])
    }

    async fn sign_out_location(&self, query: &str, header: Option<&str>) -> String {
        let mut req = self.client.get(format!("{}/oauth2/sign_out{query}", self.proxy.url));
        if let Some(h) = header {
            req = req.header("X-Auth-Request-Redirect", h);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 302, "sign_out {query}");
        location(&resp)
    }
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Whether `p` can travel as a header value as it is: no CR, LF, NUL or other controls
/// but TAB, and no leading or trailing space or TAB (HTTP strips those before anyone
/// reads the value, so `"\t/app"` arrives as `/app`, a fine target).
fn header_safe(p: &str) -> bool {
    reqwest::header::HeaderValue::from_str(p).is_ok() && p.trim_matches([' ', '\t']) == p
}

#[test]
fn the_corpus_covers_every_class_with_at_least_300_payloads() {
    let bad = corpus("open_redirects.jsonl");
    assert!(bad.len() >= 300, "{} payloads", bad.len());
    let classes: BTreeSet<&str> = bad.iter().map(|(c, _)| c.as_str()).collect();
    for class in [
        "CVE-2020-5233 backslash prefixes",
        "CVE-2020-11053 whitespace between slashes",
        "CVE-2020-4037 dot and tab segments",
        "CVE-2021-21291 suffix-matched whitelist",
        "scheme tricks",
        "userinfo",
        "IDN and punycode look-alikes",
        "ports",
        "mixed case",
        "double and triple encoding",
        "backslashes",
        "CR/LF/TAB/NUL anywhere",
    ] {
        assert!(classes.contains(class), "no payload of class {class:?}");
    }
    let unique: BTreeSet<&str> = bad.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(unique.len(), bad.len(), "duplicates in the corpus");
}

const SIGNED_OUT: &str = "/oauth2/signed_out";
#[tokio::test]
async fn every_payload_falls_back_to_a_local_page_at_every_entry_point() {
    let env = setup(&[]).await;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (class, p) in corpus("open_redirects.jsonl") {
        let q = format!("?rd={}", enc(&p));
        let mut outcomes = vec![
            ("start ?rd", env.start_target(&q, None).await),
            ("sign_in ?rd", env.sign_in_target(&q).await),
            ("sign_out ?rd", env.sign_out_location(&q, None).await),
        ];
        if header_safe(&p) {
            outcomes.push(("start X-Auth-Request-Redirect", env.start_target("", Some(&p)).await));
            outcomes.push(("sign_out X-Auth-Request-Redirect", env.sign_out_location("", Some(&p)).await));
        }
        for (entry, got) in outcomes {
            checked += 1;
            // Sign-out without a usable target lands on the "You are signed out" page.
            let fallback = if entry.starts_with("sign_out") { SIGNED_OUT } else { "/" };
            if got != fallback {
                failures.push(format!("{entry}: [{class}] {p:?} -> {got:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} accepted:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 1500, "{checked} checks");
}

#[tokio::test]
async fn good_targets_still_work_at_every_entry_point() {
    let env = setup(&[]).await;
    for (_, p) in corpus("good_redirects.jsonl") {
        let expected = if p.starts_with('/') {
            p.clone()
        } else {
            url::Url::parse(&p).unwrap().to_string()
        };
        let q = format!("?rd={}", enc(&p));
        assert_eq!(env.start_target(&q, None).await, expected, "start {p}");
        assert_eq!(env.sign_in_target(&q).await, expected, "sign_in {p}");
        assert_eq!(env.sign_out_location(&q, None).await, expected, "sign_out {p}");
        assert_eq!(env.start_target("", Some(&p)).await, expected, "start header {p}");
        assert_eq!(env.sign_out_location("", Some(&p)).await, expected, "sign_out header {p}");
    }
}

#[tokio::test]
async fn the_post_logout_redirect_sent_to_the_provider_is_validated_too() {
    let env = setup(&["--oidc-logout=true"]).await;
    // Discovery happens on the first start.
    let _ = env.start_target("", None).await;
    let base = env.proxy.url.clone();
    let post_logout = |loc: &str| -> String {
        let u = url::Url::parse(loc).unwrap_or_else(|e| panic!("{loc}: {e}"));
        assert!(u.path().ends_with("/session/end"), "to the provider's end-session endpoint: {loc}");
        u.query_pairs()
            .find(|(k, _)| k == "post_logout_redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let mut failures = Vec::new();
    for (class, p) in corpus("open_redirects.jsonl") {
        let back = post_logout(&env.sign_out_location(&format!("?rd={}", enc(&p)), None).await);
        if back != format!("{base}{SIGNED_OUT}") {
            failures.push(format!("[{class}] {p:?} -> {back:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let back = post_logout(&env.sign_out_location("?rd=%2Fapp%3Fx%3D1", None).await);
    assert_eq!(back, format!("{base}/app?x=1"));
    let back = post_logout(
        &env.sign_out_location(&format!("?rd={}", enc("https://app.example.com/bye")), None)
            .await,
    );
    assert_eq!(back, "https://app.example.com/bye");
}

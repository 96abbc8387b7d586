//! The redirect validator: whatever it accepts resolves, from any page of ours, to our own
//! origin or a whitelisted host, over http(s), with no userinfo and no control characters,
//! even after one more round of percent-decoding by some hop along the way.

use std::sync::OnceLock;

use sidekey_proxy::redirect::RedirectPolicy;
use url::Url;

fn policy() -> &'static RedirectPolicy {
    static P: OnceLock<RedirectPolicy> = OnceLock::new();
    P.get_or_init(|| RedirectPolicy::new(&[".example.com".into(), "exact.org:8443".into()]))
}

fn allowed(target: &str, url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.strip_suffix('.').unwrap_or(host);
    let local = target.starts_with('/') && host == "sidekey.invalid";
    let whitelisted = (host == "example.com" || host.ends_with(".example.com")) && url.port().is_none()
        || host == "exact.org" && url.port_or_known_default() == Some(8443);
    (local || whitelisted) && matches!(url.scheme(), "http" | "https") && url.username().is_empty() && url.password().is_none()
}

pub fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    let Some(target) = policy().validate(input) else { return };
    assert!(
        !target.chars().any(|c| c.is_control() || c == '\\'),
        "{input:?} accepted as {target:?}"
    );
    let base = Url::parse("https://sidekey.invalid/app/page").expect("static URL");
    let resolved = base
        .join(&target)
        .unwrap_or_else(|e| panic!("{input:?} accepted as {target:?}, which does not parse: {e}"));
    assert!(
        allowed(&target, &resolved),
        "{input:?} accepted as {target:?}, which leads to {resolved}"
    );
    let decoded: String = url::form_urlencoded::parse(format!("x={}", target.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if let Ok(again) = base.join(&decoded) {
        assert!(
            allowed(&decoded, &again),
            "{input:?} accepted as {target:?}, which decoded once more leads to {again}"
        );
    }
}

//! Identity headers: stripping every client-sent copy of a header the proxy can set
//! (any case, `_` for `-`), and setting them from the session.

use crate::secret::Exposed;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::config::HeaderConfig;
use crate::session::Session;

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy. `HTTP2-Settings` belongs to
/// an h2c upgrade (RFC 7540 §3.2), which is never passed on.
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
];

/// [`HOP_BY_HOP`] as header names, for removing them without parsing the names per request.
pub(crate) static HOP_BY_HOP_NAMES: [HeaderName; 10] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("http2-settings"),
];

/// Every identity header the proxy may set, in canonical lower-case form.
pub const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-access-token",
    "gap-auth",
    "gap-signature",
];

/// `X_Forwarded_User`, `x-forwarded-user` and `X-FORWARDED-USER` are one header to many
/// app frameworks (CGI, WSGI, Rack map `-` and `_` alike), so they are matched alike here.
fn same_header(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name.bytes().zip(canonical.bytes()).all(|(a, b)| {
            let a = if a == b'_' { b'-' } else { a.to_ascii_lowercase() };
            a == b
        })
}

/// Removes client-sent identity headers, and `Authorization` when the proxy sets it upstream.
pub fn strip_identity_headers(headers: &mut HeaderMap, cfg: &HeaderConfig) {
    let strip_authorization = cfg.pass_basic_auth || cfg.pass_authorization_header;
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            IDENTITY_HEADERS.iter().any(|c| same_header(n, c)) || (strip_authorization && same_header(n, "authorization"))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

/// Removes the headers a client's `Connection` names as hop-by-hop (RFC 9110 §7.6.1). Run
/// first, on the request as it arrived: run after the proxy had set its own headers, it let
/// a client name them and have them deleted on the way to the app (`Connection: close,
/// X-Forwarded-Email`, the Traefik CVE-2024-45410 class). Even here it never deletes a
/// header the proxy sets or reads from a trusted front end (identity, `Authorization`,
/// `X-Auth-Request-*`, anything [`describes_client`]), nor `Host` or `Content-Length`: the
/// client's copies of the first are stripped anyway, and the rest are not a client's to
/// drop. The hop-by-hop headers themselves stay for the upstream code, which reads
/// `Upgrade` and `TE` and then removes them all.
///
/// [`describes_client`]: crate::forwarded::describes_client
pub fn remove_connection_nominated(headers: &mut HeaderMap, client_ip_header: &HeaderName) {
    let kept = |name: &str| {
        IDENTITY_HEADERS.iter().any(|c| same_header(name, c))
            || same_header(name, "authorization")
            || (name.len() > 15 && same_header(&name[..15], "x-auth-request-"))
            || crate::forwarded::describes_client(name, client_ip_header)
            || name == "host"
            || name == "content-length"
    };
    // The hop-by-hop headers are left for the upstream code (above).
    for name in connection_named(headers).into_iter().filter(|n| !kept(n.as_str())) {
        headers.remove(&name);
    }
}

/// The headers a `Connection` header names, other than the hop-by-hop ones (removed in any
/// case): checked first, the usual `keep-alive` costs nothing.
pub(crate) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h)))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect()
}

/// Removes `names` in every spelling an app framework would read as them.
pub fn remove_all_spellings(headers: &mut HeaderMap, names: &[&str]) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| names.iter().any(|c| same_header(name.as_str(), c)))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(&name);
    }
}

fn value(text: &str) -> Option<HeaderValue> {
    // A claim with characters a header cannot carry is dropped, never sent mangled.
    (!text.is_empty()).then(|| HeaderValue::from_str(text).ok()).flatten()
}

fn put(headers: &mut HeaderMap, name: &'static str, text: &str) {
    if let Some(v) = value(text) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn put_or_empty(headers: &mut HeaderMap, name: &'static str, text: &str) {
    let v = value(text).unwrap_or_else(|| HeaderValue::from_static(""));
    headers.insert(HeaderName::from_static(name), v);
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {creds}")).ok()
}

fn bearer(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}")).ok()
}

/// Headers for the upstream request (oauth2-proxy's `pass_*` options).
pub fn set_upstream_headers(headers: &mut HeaderMap, cfg: &HeaderConfig, s: &Session) {
    let user = if cfg.prefer_email_to_user && !s.email.is_empty() {
        &s.email
    } else {
        &s.user
    };
    if cfg.pass_basic_auth {
        let password = cfg.basic_auth_password.as_ref().map(|p| p.expose().as_str()).unwrap_or("");
        if let Some(v) = basic(user, password) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    if cfg.pass_basic_auth || cfg.pass_user_headers {
        put(headers, "x-forwarded-user", user);
        put(headers, "x-forwarded-email", &s.email);
        put(headers, "x-forwarded-groups", &s.groups.join(","));
        put(headers, "x-forwarded-preferred-username", &s.preferred_username);
    }
    if cfg.pass_access_token
        && let Some(t) = &s.access_token
    {
        put(headers, "x-forwarded-access-token", t.expose_str());
    }
    if cfg.pass_authorization_header
        && let Some(v) = s.id_token.exposed().and_then(bearer)
    {
        headers.insert(header::AUTHORIZATION, v);
    }
}

/// Headers for the response (oauth2-proxy's `set_*` options, read by auth_request front ends).
pub fn set_response_headers(headers: &mut HeaderMap, cfg: &HeaderConfig, s: &Session) {
    let user = if cfg.prefer_email_to_user && !s.email.is_empty() {
        &s.email
    } else {
        &s.user
    };
    if cfg.set_xauthrequest {
        // Always present, empty when unknown: Caddy 2.6's `copy_headers` sends its literal
        // `{http.reverse_proxy.header.…}` placeholder to the app for a missing header.
        put_or_empty(headers, "x-auth-request-user", user);
        put_or_empty(headers, "x-auth-request-email", &s.email);
        put_or_empty(headers, "x-auth-request-groups", &s.groups.join(","));
        put_or_empty(headers, "x-auth-request-preferred-username", &s.preferred_username);
        if cfg.pass_access_token {
            put_or_empty(headers, "x-auth-request-access-token", s.access_token.exposed().unwrap_or(""));
        }
    }
    if cfg.set_basic_auth {
        let password = cfg.basic_auth_password.as_ref().map(|p| p.expose().as_str()).unwrap_or("");
        if let Some(v) = basic(user, password) {
            headers.insert(header::AUTHORIZATION, v);
        }
    }
    if cfg.set_authorization_header
        && let Some(v) = s.id_token.exposed().and_then(bearer)
    {
        headers.insert(header::AUTHORIZATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_names_are_the_hop_by_hop_list() {
        let names: Vec<&str> = HOP_BY_HOP_NAMES.iter().map(HeaderName::as_str).collect();
        assert_eq!(names, HOP_BY_HOP);
    }

    #[test]
    fn strips_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-user",
            "X_Forwarded_User",
            "x_forwarded-EMAIL",
            "X-AUTH-REQUEST-GROUPS",
            "x_auth_request_access_token",
            "gap-auth",
            "authorization",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_static("spoofed"),
            );
        }
        h.append("x-forwarded-user", HeaderValue::from_static("second copy"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-userx", HeaderValue::from_static("not ours"));
        let cfg = HeaderConfig {
            pass_basic_auth: true,
            ..HeaderConfig::default()
        };
        strip_identity_headers(&mut h, &cfg);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["x-forwarded-for", "x-forwarded-userx"]);
    }

    #[test]
    fn connection_names_only_the_clients_own_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            (
                "connection",
                "close, X-Forwarded-Email ,, x_forwarded_user, AUTHORIZATION, X-Auth-Request-Redirect",
            ),
            (
                "connection",
                "x-forwarded-for,X-Real-IP, x-client-ip, Forwarded, Host, Content-Length, Upgrade, TE",
            ),
            ("connection", "X-App-Hop, x-auth-request-anything, cf-connecting-ip"),
            ("x-forwarded-email", "e"),
            ("x_forwarded_user", "u"),
            ("authorization", "a"),
            ("x-auth-request-redirect", "/r"),
            ("x-auth-request-anything", "x"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-client-ip", "1.2.3.4"),
            ("cf-connecting-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("host", "h"),
            ("content-length", "0"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("x-app-hop", "gone"),
        ] {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_static(v));
        }
        let before = h.len();
        remove_connection_nominated(&mut h, &HeaderName::from_static("x-client-ip"));
        assert!(!h.contains_key("x-app-hop"));
        assert_eq!(h.len(), before - 1, "{h:?}");
    }

    #[test]
    fn authorization_is_kept_when_the_proxy_does_not_set_it() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer app-token"));
        strip_identity_headers(&mut h, &HeaderConfig::default());
        assert!(h.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn sets_upstream_and_response_headers() {
        let s = Session {
            user: "u1".into(),
            email: "a@example.com".into(),
            preferred_username: "alice".into(),
            groups: vec!["g1".into(), "g2".into()],
            access_token: Some("at".into()),
            id_token: Some("idt".into()),
            ..Session::default()
        };
        let cfg = HeaderConfig {
            pass_user_headers: true,
            pass_access_token: true,
            pass_authorization_header: true,
            set_xauthrequest: true,
            ..HeaderConfig::default()
        };
        let mut up = HeaderMap::new();
        set_upstream_headers(&mut up, &cfg, &s);
        assert_eq!(up["x-forwarded-user"], "u1");
        assert_eq!(up["x-forwarded-email"], "a@example.com");
        assert_eq!(up["x-forwarded-groups"], "g1,g2");
        assert_eq!(up["x-forwarded-preferred-username"], "alice");
        assert_eq!(up["x-forwarded-access-token"], "at");
        assert_eq!(up["authorization"], "Bearer idt");
        let mut resp = HeaderMap::new();
        set_response_headers(&mut resp, &cfg, &s);
        assert_eq!(resp["x-auth-request-user"], "u1");
        assert_eq!(resp["x-auth-request-access-token"], "at");
        let basic_cfg = HeaderConfig {
            pass_basic_auth: true,
            prefer_email_to_user: true,
            ..HeaderConfig::default()
        };
        let mut up = HeaderMap::new();
        set_upstream_headers(&mut up, &basic_cfg, &s);
        assert_eq!(up["authorization"], "Basic YUBleGFtcGxlLmNvbTo="); // a@example.com:
        assert_eq!(up["x-forwarded-user"], "a@example.com");
    }
}

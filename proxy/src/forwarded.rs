//! What the original request looked like when a front end (nginx, Traefik, Caddy, Envoy)
//! sits before the proxy. `X-Forwarded-*` and `X-Auth-Request-Redirect` are believed only
//! when `reverse_proxy` is on **and** the TCP peer is in `trusted_proxy_ips`; from anyone
//! else they change nothing and never reach the upstream (CVE-2026-40575 class).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName};
use ipnet::IpNet;

/// Headers a front end uses to describe the original request. Stripped from requests of
/// untrusted peers before anything reads them or forwards them.
pub const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
    "x-auth-request-redirect",
    "forwarded",
];

#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// `reverse_proxy`: without it no peer is trusted.
    pub enabled: bool,
    pub proxies: Vec<IpNet>,
    /// `real_client_ip_header`: where a trusted front end puts the client address.
    pub client_ip_header: HeaderName,
}

impl TrustPolicy {
    /// Parses `trusted_proxy_ips`; empty means loopback only. Plain addresses are /32 or /128.
    pub fn new(enabled: bool, trusted: &[String], client_ip_header: HeaderName) -> Result<Self, String> {
        let defaults = ["127.0.0.0/8".to_string(), "::1/128".to_string()];
        let list = if trusted.is_empty() { &defaults[..] } else { trusted };
        let proxies = list
            .iter()
            .map(|raw| {
                let raw = raw.trim();
                raw.parse::<IpNet>()
                    .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{raw}` is not an IP address or CIDR such as 10.0.0.0/8 or 127.0.0.1"))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustPolicy {
            enabled,
            proxies,
            client_ip_header,
        })
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.enabled && self.proxies.iter().any(|n| n.contains(&peer))
    }
}

/// The original request as far as the proxy may believe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The peer is a trusted front end, so its forwarding headers are believed.
    pub trusted: bool,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Host (and port) the browser used, if known and well-formed.
    pub host: Option<String>,
    /// Path and query the browser asked for, from `X-Forwarded-Uri` (trusted front ends only).
    pub uri: Option<String>,
    /// `X-Auth-Request-Redirect` from a trusted front end: where to go after signing in.
    pub auth_redirect: Option<String>,
    /// The client's address: the trusted front end's client header, else the TCP peer.
    pub client: IpAddr,
}

impl Origin {
    /// Reads the origin and, for an untrusted peer, removes every forwarding header so
    /// nothing downstream (routing, rules, the upstream app) can be fooled by them.
    pub fn read(headers: &mut HeaderMap, peer: IpAddr, listener_scheme: &'static str, policy: &TrustPolicy) -> Origin {
        let trusted = policy.trusts(peer);
        // `X_Forwarded_Host` is `X-Forwarded-Host` to CGI, WSGI and Rack apps. No front end
        // sends such spellings (nginx drops them by default), so they go from every peer:
        // an app must never see a second, unchecked copy of a forwarding header.
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|n| {
                n.as_str().contains('_') && {
                    let dashed = n.as_str().replace('_', "-");
                    FORWARDING_HEADERS.contains(&dashed.as_str())
                        || dashed == "x-forwarded-for"
                        || dashed == "x-real-ip"
                        || dashed == policy.client_ip_header.as_str()
                }
            })
            .cloned()
            .collect();
        for name in underscored {
            headers.remove(&name);
        }
        if !trusted {
            for name in FORWARDING_HEADERS {
                headers.remove(*name);
            }
        }
        let own_host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| valid_host(h))
            .map(str::to_string);
        if !trusted {
            return Origin {
                trusted,
                scheme: listener_scheme,
                host: own_host,
                uri: None,
                auth_redirect: None,
                client: peer.to_canonical(),
            };
        }
        let first = |name: &str| -> Option<String> {
            let v = headers.get(name)?.to_str().ok()?;
            // A chain of front ends appends; the first entry is the one the browser saw.
            Some(v.split(',').next().unwrap_or("").trim().to_string()).filter(|s| !s.is_empty())
        };
        let scheme = match first("x-forwarded-proto").map(|p| p.to_ascii_lowercase()).as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            _ => listener_scheme,
        };
        let host = first("x-forwarded-host").filter(|h| valid_host(h)).or(own_host);
        let uri = headers
            .get("x-forwarded-uri")
            .and_then(|v| v.to_str().ok())
            .filter(|u| u.starts_with('/') && !u.starts_with("//"))
            .map(str::to_string);
        let auth_redirect = headers
            .get("x-auth-request-redirect")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let client = headers
            .get(&policy.client_ip_header)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
            .unwrap_or(peer)
            .to_canonical();
        Origin {
            trusted,
            scheme,
            host,
            uri,
            auth_redirect,
            client,
        }
    }

    /// `scheme://host` of the original request.
    pub fn base_url(&self) -> Option<String> {
        self.host.as_ref().map(|h| format!("{}://{h}", self.scheme))
    }

    /// The full URL the browser asked for, when a trusted front end said so.
    pub fn original_url(&self) -> Option<String> {
        Some(format!("{}{}", self.base_url()?, self.uri.as_ref()?))
    }
}

/// A host header value we are willing to put into URLs and cookie domains.
fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn policy(enabled: bool) -> TrustPolicy {
        TrustPolicy::new(enabled, &[], HeaderName::from_static("x-real-ip")).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const SPOOF: &[(&str, &str)] = &[
        ("host", "app.example.com"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example.net"),
        ("x-forwarded-uri", "/public"),
        ("x-original-url", "/public"),
        ("x-auth-request-redirect", "https://evil.example.net/"),
        ("x-real-ip", "10.9.9.9"),
    ];

    #[test]
    fn untrusted_peers_change_nothing_and_lose_their_forwarding_headers() {
        for (enabled, peer) in [(false, "127.0.0.1"), (true, "192.0.2.7")] {
            let mut h = headers(SPOOF);
            let o = Origin::read(&mut h, peer.parse().unwrap(), "http", &policy(enabled));
            assert!(!o.trusted);
            assert_eq!(o.scheme, "http");
            assert_eq!(o.host.as_deref(), Some("app.example.com"));
            assert_eq!((o.uri, o.auth_redirect), (None, None));
            assert_eq!(o.client, peer.parse::<IpAddr>().unwrap());
            for name in FORWARDING_HEADERS {
                assert!(h.get(*name).is_none(), "{name} kept");
            }
        }
    }

    #[test]
    fn trusted_front_ends_describe_the_original_request() {
        let mut h = headers(SPOOF);
        let o = Origin::read(&mut h, "::ffff:127.0.0.1".parse().unwrap(), "http", &policy(true));
        assert!(o.trusted);
        assert_eq!(o.original_url().as_deref(), Some("https://evil.example.net/public"));
        assert_eq!(o.client, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert!(h.get("x-forwarded-uri").is_some());
    }

    #[test]
    fn malformed_forwarding_values_fall_back() {
        let mut h = headers(&[
            ("host", "app.example.com"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "evil.com/path"),
            ("x-forwarded-uri", "//evil.com"),
            ("x-real-ip", "not-an-ip"),
        ]);
        let o = Origin::read(&mut h, "127.0.0.1".parse().unwrap(), "https", &policy(true));
        assert_eq!(
            (o.scheme, o.host.as_deref(), o.uri.as_deref()),
            ("https", Some("app.example.com"), None)
        );
        assert_eq!(o.client, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn cidrs_and_plain_addresses() {
        let p = TrustPolicy::new(
            true,
            &["10.0.0.0/8".into(), "192.0.2.1".into()],
            HeaderName::from_static("x-real-ip"),
        )
        .unwrap();
        assert!(p.trusts("10.1.2.3".parse().unwrap()));
        assert!(p.trusts("192.0.2.1".parse().unwrap()));
        assert!(!p.trusts("192.0.2.2".parse().unwrap()));
        assert!(!p.trusts("127.0.0.1".parse().unwrap()));
        assert!(TrustPolicy::new(true, &["10.0.0.0/33".into()], HeaderName::from_static("x-real-ip")).is_err());
    }
}

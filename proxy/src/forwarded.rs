//! What the original request looked like when a front end (nginx, Traefik, Caddy, Envoy)
//! sits before the proxy. `X-Forwarded-*` and `X-Auth-Request-Redirect` are believed only
//! when `reverse_proxy` is on **and** the TCP peer is in `trusted_proxy_ips`; from anyone
//! else they change nothing and never reach the upstream (CVE-2026-40575 class).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName};
use ipnet::IpNet;

/// Headers a front end uses to describe the original request, the ones the proxy itself
/// reads from a trusted front end. Their `_` spellings go from every peer (see
/// [`Origin::read`]); from untrusted peers they go with the rest of [`describes_client`].
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

/// Everything else front ends, load balancers and CDNs send to describe the client: its
/// address, scheme, TLS client certificate, the host or path it asked for. Apps believe
/// them (Rails reads `Client-IP`, gunicorn `X-Forwarded-Ssl`, Tomcat's SSLValve
/// `ssl_client_cert`, Jetty `Proxy-auth-cert`), so from an untrusted peer each is a forgery.
/// Sources: nginx and ingress-nginx, Envoy/Istio, Traefik, HAProxy, Apache with Tomcat,
/// Jetty, AWS ALB, Azure Application Gateway, App Service and Front Door, Google Cloud load
/// balancers, Cloudflare, Fastly, Akamai.
pub const CLIENT_DESCRIPTION_HEADERS: &[&str] = &[
    "x-forwarded",
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-proxyuser-ip",
    "x-client-port",
    "x-client-verify",
    "x-client-dn",
    "x-client-s-dn",
    "x-client-i-dn",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-original-host",
    "x-host",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
    "x-ssl",
    "ssl-cipher",
    "ssl-session-id",
    "ssl-cipher-usekeysize",
    "proxy-auth-cert",
    "proxy-ssl-id",
];

/// Whole families of such headers, by name prefix; new members of a family are covered
/// before anyone lists them.
pub const CLIENT_DESCRIPTION_PREFIXES: &[&str] = &[
    // -For, -Proto, -Host, -Port, -Ssl, -Scheme, -Protocol, -Path, -Client-Cert (Envoy and
    // Istio's client identity), -Tls-Client-Cert(-Info) (Traefik), and any later one.
    "x-forwarded-",
    // Envoy's own (x-envoy-external-address, -internal, -original-path), which Envoy
    // strips from external clients itself.
    "x-envoy-",
    // Google Cloud mTLS (X-Client-Cert-Present, -Chain-Verified, -Hash, …) and the common
    // X-Client-Cert.
    "x-client-cert",
    // ingress-nginx (ssl-client-cert, -verify, -subject-dn, -issuer-dn); Apache for Tomcat.
    "ssl-client-",
    // HAProxy and nginx conventions: X-SSL-Client-Cert, -Verify, -S-DN, X-SSL-Cert.
    "x-ssl-",
    // Azure App Service: X-ARR-ClientCert, X-ARR-SSL.
    "x-arr-",
    // AWS ALB mTLS: X-Amzn-Mtls-Clientcert, -Leaf, -Serial-Number, -Issuer, -Subject.
    "x-amzn-mtls-",
    // Cloudflare: CF-Connecting-IP, -IPv6, CF-Visitor (the scheme), CF-IPCountry.
    "cf-",
    // Fastly: Fastly-Client-IP, Fastly-SSL.
    "fastly-",
];

/// Whether `name`, in any case and with `_` for `-` (one header to CGI, WSGI and Rack), is
/// one a front end uses to describe the client or the original request: the lists above,
/// `X-Forwarded-For` and `real_client_ip_header`.
pub fn describes_client(name: &str, client_ip_header: &HeaderName) -> bool {
    FORWARDING_HEADERS.iter().any(|c| same(name, c))
        || CLIENT_DESCRIPTION_HEADERS.iter().any(|c| same(name, c))
        || CLIENT_DESCRIPTION_PREFIXES
            .iter()
            .any(|p| name.len() >= p.len() && same(&name.as_bytes()[..p.len()], p))
        || same(name, client_ip_header.as_str())
}

/// Equal in ASCII case, `_` and `-` alike.
fn same(a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> bool {
    let (a, b) = (a.as_ref(), b.as_ref());
    let fold = |c: u8| if c == b'_' { b'-' } else { c.to_ascii_lowercase() };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| fold(*x) == fold(*y))
}

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
    /// Reads the origin and, for an untrusted peer, removes every header that describes the
    /// client or the original request ([`describes_client`], in every spelling) so nothing
    /// downstream (routing, rules, the upstream app) can be fooled by them; the proxy then
    /// sets its own `X-Forwarded-For`, `-Proto` and `-Host` upstream.
    pub fn read(headers: &mut HeaderMap, peer: IpAddr, listener_scheme: &'static str, policy: &TrustPolicy) -> Origin {
        let trusted = policy.trusts(peer);
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|n| {
                let n = n.as_str();
                if !trusted {
                    return describes_client(n, &policy.client_ip_header);
                }
                // `X_Forwarded_Host` is `X-Forwarded-Host` to CGI, WSGI and Rack apps. No
                // front end sends such spellings of the headers the proxy reads (nginx drops
                // them by default), so they go from trusted peers too: an app must never
                // see a second, unchecked copy of one. Other `_` names a trusted front end
                // sends (Apache's `ssl_client_cert` for Tomcat) are its to send.
                n.contains('_')
                    && (FORWARDING_HEADERS.iter().any(|c| same(n, c))
                        || same(n, "x-forwarded-for")
                        || same(n, "x-real-ip")
                        || same(n, policy.client_ip_header.as_str()))
            })
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(&name);
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
    fn every_spelling_of_every_client_description_goes_from_untrusted_peers_only() {
        let policy = TrustPolicy::new(true, &[], HeaderName::from_static("x-client-ip")).unwrap();
        let names = [
            "x-forwarded-for",
            "X_Forwarded_Ssl",
            "x-forwarded-tls-client-cert-info",
            "X-FORWARDED-CLIENT-CERT",
            "x_client_ip",
            "ssl_client_cert",
            "cf-connecting-ip",
            "True-Client-IP",
            "x-envoy-external-address",
            "x-amzn-mtls-clientcert",
            "forwarded",
        ];
        for name in names {
            assert!(describes_client(name, &policy.client_ip_header), "{name}");
        }
        for name in [
            "x-forwarded",
            "x-forwardedfor",
            "x-request-id",
            "cookie",
            "x-client-version",
            "accept",
        ] {
            assert_eq!(describes_client(name, &policy.client_ip_header), name == "x-forwarded", "{name}");
        }
        let mut h = HeaderMap::new();
        for name in names {
            h.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_static("forged"));
        }
        h.insert("x-request-id", HeaderValue::from_static("kept"));
        let mut untrusted = h.clone();
        Origin::read(&mut untrusted, "192.0.2.7".parse().unwrap(), "http", &policy);
        assert_eq!(untrusted.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-request-id"]);
        // A trusted front end keeps what it sent, bar `_` spellings of what the proxy reads.
        let mut trusted = h.clone();
        Origin::read(&mut trusted, "127.0.0.1".parse().unwrap(), "http", &policy);
        let mut kept: Vec<_> = trusted.keys().map(|k| k.as_str()).collect();
        kept.sort();
        let mut want: Vec<_> = names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .filter(|n| n != "x_client_ip")
            .chain(["x-request-id".to_string()])
            .collect();
        want.sort();
        assert_eq!(kept, want);
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

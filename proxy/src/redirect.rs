//! The one redirect validator. Every redirect target a client can influence (`rd`, the
//! post-login target, sign-out targets) goes through [`RedirectPolicy::validate`].
//!
//! A target is accepted only if it is a plain local path (`/x`, never `//x` or `/\x`) or an
//! absolute http(s) URL whose host is in `whitelist_domains`. Anything with control
//! characters, whitespace, backslashes or userinfo — raw or after percent-decoding — is
//! refused, which covers every open-redirect class oauth2-proxy has fixed.

use percent_encoding::percent_decode_str;
use url::Url;

const MAX_LEN: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct RedirectPolicy {
    /// Entries like `example.com`, `.example.com` (subdomains), `example.com:8443`, `example.com:*`.
    whitelist: Vec<(String, bool, PortRule)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PortRule {
    Default,
    Any,
    Exact(u16),
}

impl RedirectPolicy {
    pub fn new(whitelist_domains: &[String]) -> Self {
        let whitelist = whitelist_domains
            .iter()
            .map(|raw| {
                let raw = raw.trim().to_ascii_lowercase();
                let (host, port) = match raw.rsplit_once(':') {
                    Some((h, "*")) => (h.to_string(), PortRule::Any),
                    Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), PortRule::Exact(p.parse().expect("checked"))),
                    _ => (raw.clone(), PortRule::Default),
                };
                match host.strip_prefix('.') {
                    Some(base) => (base.to_string(), true, port),
                    None => (host, false, port),
                }
            })
            .collect();
        RedirectPolicy { whitelist }
    }

    /// The target if it is safe, else `None` (callers fall back to `/`).
    pub fn validate(&self, target: &str) -> Option<String> {
        if target.is_empty() || target.len() > MAX_LEN || has_forbidden_bytes(target) {
            return None;
        }
        // Encoded tricks (`%2F%2F`, `%5C`, `%09`, double encoding) are refused outright:
        // some browser, proxy or app along the way may decode once more.
        let mut decoded = target.to_string();
        for round in 0..3 {
            // A bare `%` as sent, a `%u002f` (IIS) at any depth, or an escape that is not
            // UTF-8 (`%C0%AF`, an overlong `/`) means something else to some decoder along
            // the way. (A decoded `%25` is a plain percent sign: `/search?q=100%25`.)
            if (round == 0 && !well_formed_escapes(&decoded)) || decoded.to_ascii_lowercase().contains("%u") {
                return None;
            }
            let next = percent_decode_str(&decoded).decode_utf8().ok()?.into_owned();
            if next == decoded {
                break;
            }
            if has_forbidden_decoded(&next) {
                return None;
            }
            decoded = next;
        }
        if target.starts_with('/') {
            return self.validate_path(target);
        }
        self.validate_absolute(target)
    }

    fn validate_path(&self, target: &str) -> Option<String> {
        // `//host` and `/\host` are scheme-relative URLs to a browser.
        if target.starts_with("//") {
            return None;
        }
        // Resolve against a sentinel origin: anything that escapes it is not a local path.
        let base = Url::parse("https://sidekey.invalid/").expect("static URL");
        let joined = base.join(target).ok()?;
        (joined.host_str() == Some("sidekey.invalid") && joined.username().is_empty()).then(|| target.to_string())
    }

    fn validate_absolute(&self, target: &str) -> Option<String> {
        let lower = target.get(..8)?.to_ascii_lowercase();
        let rest = if lower.starts_with("https://") {
            &target[8..]
        } else if lower.starts_with("http://") {
            &target[7..]
        } else {
            return None; // javascript:, data:, https:host, scheme-relative
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if authority.is_empty() || authority.contains('@') {
            return None; // `https:///evil` and userinfo tricks
        }
        // A host as typed is ASCII (browsers send punycode). Unicode and percent-encoded
        // hosts are normalized by IDNA in ways that differ between parsers (`ｅxample．com`,
        // soft hyphens, `%2f`); refusing them outright is the fail-closed choice.
        if !authority.is_ascii() || authority.contains('%') {
            return None;
        }
        let url = Url::parse(target).ok()?;
        if !url.username().is_empty() || url.password().is_some() {
            return None;
        }
        // One trailing dot is the same host (`example.com.`); empty labels are no host at
        // all (`x..example.com......`), whatever a lenient resolver makes of them.
        let raw_host = url.host_str()?.to_ascii_lowercase();
        let host = raw_host.strip_suffix('.').unwrap_or(&raw_host).to_string();
        if host.is_empty() || host.starts_with('.') || host.contains("..") {
            return None;
        }
        // Letters, digits, `-`, `_` and dots, or an IP literal: `evil.com;.example.com`
        // parses as one host to some parsers and ends with `.example.com`.
        let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
        if !host.bytes().all(plain) && !matches!(url.host(), Some(url::Host::Ipv6(_))) {
            return None;
        }
        let port = url.port();
        let allowed = self.whitelist.iter().any(|(domain, subdomains, rule)| {
            let host_ok = if *subdomains {
                host == *domain || host.strip_suffix(domain.as_str()).is_some_and(|p| p.ends_with('.'))
            } else {
                host == *domain
            };
            let port_ok = match rule {
                PortRule::Any => true,
                PortRule::Default => port.is_none(),
                PortRule::Exact(p) => url.port_or_known_default() == Some(*p),
            };
            host_ok && port_ok
        });
        allowed.then(|| url.to_string())
    }
}

fn has_forbidden_bytes(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || has_forbidden_char(c)) || escapes_at_start(s)
}

/// After decoding, spaces may be legitimate (`/My%20Files`); control characters,
/// backslashes and a host-like start are not.
fn has_forbidden_decoded(s: &str) -> bool {
    s.chars().any(has_forbidden_char) || escapes_at_start(s)
}

fn has_forbidden_char(c: char) -> bool {
    c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}' || invisible(c)
}

/// Format characters that render as nothing (zero-width spaces and joiners, bidi controls,
/// the soft hyphen, the BOM): `/\u{200b}/evil.com` looks like `//evil.com` to a reader and
/// to some normalizers.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// Every `%` starts a two-digit hex escape.
fn well_formed_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| b.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)))
}

/// `//x`, `/ /x`, `/./x`, `/../x`: browsers (and some servers) read these as another host
/// (oauth2-proxy's `[/\\](\s*|\.{1,2})[/\\]`, CVE-2020-11053).
fn escapes_at_start(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('/') else { return false };
    let Some(end) = rest.find('/') else { return false };
    let between = &rest[..end];
    between.chars().all(char::is_whitespace) || between == "." || between == ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RedirectPolicy {
        RedirectPolicy::new(&[
            ".example.com".into(),
            "exact.org".into(),
            "ports.net:8443".into(),
            "anyport.io:*".into(),
        ])
    }

    #[test]
    fn accepts_local_paths_and_whitelisted_hosts() {
        let p = policy();
        for ok in ["/", "/app", "/app/x?y=1#frag", "/a/b%20c", "/search?q=a%2Fb", "/search?q=100%25"] {
            assert_eq!(p.validate(ok).as_deref(), Some(ok), "{ok}");
        }
        assert_eq!(p.validate("https://example.com/x").as_deref(), Some("https://example.com/x"));
        assert_eq!(
            p.validate("https://app.example.com/x").as_deref(),
            Some("https://app.example.com/x")
        );
        assert_eq!(p.validate("https://exact.org/").as_deref(), Some("https://exact.org/"));
        assert_eq!(p.validate("https://ports.net:8443/").as_deref(), Some("https://ports.net:8443/"));
        assert_eq!(p.validate("http://anyport.io:9999/").as_deref(), Some("http://anyport.io:9999/"));
        assert_eq!(
            p.validate("HTTPS://APP.EXAMPLE.COM/x").as_deref(),
            Some("https://app.example.com/x")
        );
    }

    #[test]
    fn refuses_open_redirects() {
        let p = policy();
        let bad = [
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/\t/evil.com",
            "/%09/evil.com",
            "/%2F/evil.com",
            "/%5Cevil.com",
            "/%255Cevil.com",
            "/%2f%2fevil.com",
            "%2F%2Fevil.com",
            "/\r\nLocation: x",
            "/ /evil.com",
            "https://evil.com",
            "https://badexample.com/",
            "https://example.com.evil.com/",
            "https:evil.com",
            "https:/evil.com",
            "https:///evil.com",
            "https://example.com@evil.com/",
            "https://evil.com\\@example.com/",
            "https://evil.com#@example.com",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,x",
            "ftp://example.com/",
            "https://exact.org.evil/",
            "https://sub.exact.org/",
            "https://ports.net/",
            "https://ports.net:9443/",
            "https://exаmple.com/",
            "evil.com",
            "",
            "/\u{0}x",
            "https://xn--exmple-4nf.com/",
            "/./evil.com",
            "/../evil.com",
            "/%20/evil.com",
            "/%2e%2e/evil.com",
            "/%C0%AFevil.com",
            "/%e0%80%af/evil.com",
            "/%u002f/evil.com",
            "/%25u002f/evil.com",
            "/50%",
            "https://evil.com;.example.com/",
            "/\u{200b}/evil.com",
            "/%e2%80%8b/evil.com",
            "https://ｅxample.com/",
            "https://app.example.com%2f/",
            "https://aphexaP..7....p.cmpl.....example.com....../...p.comttp.8#4P",
            "https://app..example.com/",
            "https://app.example.com../",
        ];
        for b in bad {
            assert_eq!(p.validate(b), None, "{b:?} accepted");
        }
    }
}

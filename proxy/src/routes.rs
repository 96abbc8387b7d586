//! Which requests skip authentication (`skip_auth_routes`, `skip_auth_preflight`) and which
//! get a 401 instead of the sign-in flow (`api_routes`), matched against ONE normalized path.
//!
//! Every skip-auth bypass in oauth2-proxy's history came from the matcher and the upstream
//! seeing different paths: a query (`/private?x=/public`), an encoded `#`, dot segments
//! (`/public/../private`), encoded slashes, backslashes. Here the path is decoded once,
//! resolved once, and that same path is both matched and sent upstream (re-encoded), so the
//! application can never see a path other than the one the rules saw.

use http::Method;
use regex::Regex;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is not absolute")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path is not UTF-8 once decoded")]
    NotUtf8,
    #[error("the path contains control characters")]
    Control,
}

/// Decodes percent-escapes once, treats `\` as `/` (as browsers and several servers do),
/// collapses repeated slashes and resolves `.` and `..` (never above the root). The query is
/// not part of the input: callers pass the URI's path only.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            decoded.push(u8::from_str_radix(text, 16).map_err(|_| PathError::BadEscape)?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(|c| c.is_control()) {
        return Err(PathError::Control);
    }
    let decoded = decoded.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut path = format!("/{}", out.join("/"));
    if trailing && path.len() > 1 {
        path.push('/');
    }
    Ok(path)
}

/// The normalized path as it goes upstream: everything but unreserved characters, sub-delims,
/// `:`, `@` and `/` percent-encoded, so `%`, `?`, `#` and spaces can never change its meaning.
pub fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Clone, Debug)]
struct SkipRule {
    /// `GET=` matches GET only; `GET!=` matches every method but GET; none matches all.
    method: Option<(Method, bool)>,
    path: Regex,
}

#[derive(Clone, Debug, Default)]
pub struct AccessRoutes {
    skip: Vec<SkipRule>,
    api: Vec<Regex>,
    skip_preflight: bool,
}

/// A rule that does not compile: the option it came from and why.
pub type RuleError = (&'static str, String);

fn regex(option: &'static str, raw: &str) -> Result<Regex, RuleError> {
    Regex::new(raw).map_err(|e| (option, format!("`{raw}` is not a valid regular expression: {e}")))
}

impl AccessRoutes {
    /// `skip_auth_routes` entries are `METHOD=regex`, `METHOD!=regex` or `regex`, as in
    /// oauth2-proxy; `skip_auth_regex` entries are regexes for any method.
    pub fn new(skip_routes: &[String], skip_regex: &[String], api_routes: &[String], skip_preflight: bool) -> Result<Self, RuleError> {
        let mut skip = Vec::new();
        for raw in skip_routes {
            let rule = match raw.split_once('=') {
                Some((m, path)) if is_method(m.trim_end_matches('!')) => {
                    let negate = m.ends_with('!');
                    let method = Method::from_bytes(m.trim_end_matches('!').as_bytes())
                        .map_err(|e| ("skip_auth_routes", format!("`{raw}`: {e}")))?;
                    SkipRule {
                        method: Some((method, negate)),
                        path: regex("skip_auth_routes", path)?,
                    }
                }
                _ => SkipRule {
                    method: None,
                    path: regex("skip_auth_routes", raw)?,
                },
            };
            skip.push(rule);
        }
        for raw in skip_regex {
            skip.push(SkipRule {
                method: None,
                path: regex("skip_auth_regex", raw)?,
            });
        }
        let api = api_routes.iter().map(|r| regex("api_routes", r)).collect::<Result<_, _>>()?;
        Ok(AccessRoutes { skip, api, skip_preflight })
    }

    /// Whether this request goes upstream without a session. `path` must be normalized.
    pub fn skips(&self, method: &Method, path: &str) -> bool {
        if self.skip_preflight && method == Method::OPTIONS {
            return true;
        }
        self.skip.iter().any(|r| {
            let method_ok = match &r.method {
                None => true,
                Some((m, negate)) => (m == method) != *negate,
            };
            method_ok && r.path.is_match(path)
        })
    }

    /// Whether an unauthenticated request gets 401 instead of the sign-in flow.
    pub fn is_api(&self, path: &str) -> bool {
        self.api.iter().any(|r| r.is_match(path))
    }
}

fn is_method(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// Headers some frameworks use to override the HTTP method. A request let through by a
/// method-specific skip rule must not become another method upstream.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &["x-http-method-override", "x-http-method", "x-method-override"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/public/../private", "/private"),
            ("/public/%2e%2e/private", "/private"),
            ("/public/%2E%2E%2Fprivate", "/private"),
            ("/public/..%2fprivate", "/private"),
            ("/public%2f..%2fprivate", "/private"),
            ("/public\\..\\private", "/private"),
            ("/public%5c..%5cprivate", "/private"),
            ("//private", "/private"),
            ("/a//b///c", "/a/b/c"),
            ("/./a/./b/.", "/a/b/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/%252e%252e/b", "/a/%2e%2e/b"),
            ("/private%23/public", "/private#/public"),
            ("/private%3Fx=/public", "/private?x=/public"),
            ("/caf%C3%A9", "/café"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%00b"), Err(PathError::Control));
        assert_eq!(normalize("/a%0d%0ab"), Err(PathError::Control));
        assert_eq!(normalize("/a%09b"), Err(PathError::Control));
        assert_eq!(normalize("/%ff"), Err(PathError::NotUtf8));
    }

    #[test]
    fn encoding_round_trips_through_normalization() {
        for path in [
            "/a b",
            "/private#/public",
            "/private?x=/public",
            "/café",
            "/100%",
            "/a/%2e%2e/b",
            "/a;b=c",
        ] {
            let encoded = encode(path);
            assert!(!encoded.contains(['#', '?', ' ']), "{encoded}");
            assert_eq!(normalize(&encoded).unwrap(), path, "{encoded}");
        }
        assert_eq!(encode("/private?x=/public"), "/private%3Fx=/public");
    }

    fn routes(skip: &[&str], api: &[&str], preflight: bool) -> AccessRoutes {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        AccessRoutes::new(&s(skip), &[], &s(api), preflight).unwrap()
    }

    #[test]
    fn skip_rules_match_method_and_normalized_path() {
        let r = routes(&["GET=^/public/", "POST!=^/hooks$", "^/healthz$", "^/q\\?x=1$"], &[], false);
        let path = |raw: &str| normalize(raw).unwrap();
        assert!(r.skips(&Method::GET, &path("/public/logo.png")));
        assert!(!r.skips(&Method::POST, &path("/public/logo.png")), "GET only");
        assert!(!r.skips(&Method::GET, &path("/public/../private")));
        assert!(!r.skips(&Method::GET, &path("/public/%2e%2e/private")));
        assert!(!r.skips(&Method::GET, &path("/PUBLIC/x")), "case-sensitive, fails closed");
        assert!(r.skips(&Method::PUT, &path("/hooks")), "negation: every method but POST");
        assert!(!r.skips(&Method::POST, &path("/hooks")));
        assert!(r.skips(&Method::DELETE, &path("/healthz")));
        assert!(!r.skips(&Method::GET, &path("/healthz/../admin")));
        // The query is never part of the path, so a rule cannot be satisfied through it.
        assert!(!r.skips(&Method::GET, &path("/private")));
        assert!(!r.skips(&Method::OPTIONS, &path("/private")), "no preflight skip unless asked");
        let pre = routes(&[], &[], true);
        assert!(pre.skips(&Method::OPTIONS, "/private"));
        assert!(!pre.skips(&Method::GET, "/private"));
    }

    #[test]
    fn api_routes_and_bad_rules() {
        let r = routes(&[], &["^/api/"], false);
        assert!(r.is_api("/api/v1/items"));
        assert!(!r.is_api("/app/api/"));
        let (option, why) = AccessRoutes::new(&["GET=^/(".into()], &[], &[], false).unwrap_err();
        assert_eq!(option, "skip_auth_routes");
        assert!(why.contains("not a valid regular expression"), "{why}");
        // A regex with `=` in it is a path, not a method rule.
        let r = routes(&["^/a\\?b=c"], &[], false);
        assert!(r.skips(&Method::GET, "/a?b=c"));
    }
}

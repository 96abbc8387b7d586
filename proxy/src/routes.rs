//! Which requests skip authentication (`skip_auth_routes`, `skip_auth_preflight`) and which
//! get a 401 instead of the sign-in flow (`api_routes`), matched against ONE normalized path.
//!
//! Every skip-auth bypass in oauth2-proxy's history came from the matcher and the upstream
//! seeing different paths: a query (`/private?x=/public`), an encoded `#`, dot segments
//! (`/public/../private`), encoded slashes, backslashes, servlet path parameters
//! (`/public/..;/private`, `/private/x;.png`). Here the path is decoded once, resolved once,
//! and that same path is both matched and sent upstream (re-encoded), so the application can
//! never see a path other than the one the rules saw. Where upstreams themselves disagree
//! about a path's meaning (a `;`, an escape a second decoding would change), no rule lets it
//! through without a session: the request fails closed to the sign-in flow.

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

/// A request path, normalized: what the access rules match, and what the upstream receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPath {
    /// Decoded once, `\` read as `/`, empty and dot segments resolved: what rules match.
    pub decoded: String,
    /// `decoded` as it goes upstream, percent-encoded by [`encode`], except that a `;` the
    /// client sent raw stays raw (a signed-in user's `;jsessionid=` still reaches Tomcat)
    /// while one it sent as `%3B` stays `%3B`: an escape never becomes a path parameter.
    pub wire: String,
    /// The path as the client sent it already meant `decoded` to every common server, with
    /// nothing left to resolve: no dot or empty segments, no `\`, no `;` and no escaped `/`,
    /// `\`, `;` or `%`. Forward-auth needs this, as the front end sends the app the path as
    /// the client sent it, not `wire`.
    pub as_sent: bool,
}

/// Decodes percent-escapes once, treats `\` as `/` (as browsers and several servers do),
/// collapses repeated slashes and resolves `.` and `..` (never above the root). A segment
/// that is `.` or `..` before its first `;` is a dot segment too, whatever follows (`..;`,
/// `.;jsessionid=1`, `%2e%2e;x`, `..%3b`): servlet containers (Tomcat, Jetty, Spring) drop
/// path parameters before they resolve dots, and no other server has files named so. The
/// query is not part of the input: callers pass the URI's path only.
pub fn parse(raw: &str) -> Result<RequestPath, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    // Which bytes of `decoded` were a raw `;` (a path-parameter separator to servlet
    // containers), as opposed to a decoded `%3B` (a literal character everywhere).
    let mut raw_semicolon = Vec::with_capacity(bytes.len());
    let mut escapes_structure = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let text = std::str::from_utf8(hex).map_err(|_| PathError::BadEscape)?;
            let b = u8::from_str_radix(text, 16).map_err(|_| PathError::BadEscape)?;
            escapes_structure |= matches!(b, b'/' | b'\\' | b';' | b'%');
            decoded.push(b);
            raw_semicolon.push(false);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            raw_semicolon.push(bytes[i] == b';');
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(|c| c.is_control()) {
        return Err(PathError::Control);
    }
    // `\` → `/` keeps byte offsets, so `raw_semicolon` still lines up.
    let unified = decoded.replace('\\', "/");
    let mut kept: Vec<(usize, &str)> = Vec::new();
    let mut offset = 0;
    let mut last_was_dot = false;
    for segment in unified.split('/') {
        let start = offset;
        offset += segment.len() + 1;
        let name = segment.split(';').next().unwrap_or("");
        last_was_dot = false;
        match (segment, name) {
            ("", _) => {}
            (_, ".") => last_was_dot = true,
            (_, "..") => {
                kept.pop();
                last_was_dot = true;
            }
            _ => kept.push((start, segment)),
        }
    }
    let trailing = unified.ends_with('/') || last_was_dot;
    let mut path = String::with_capacity(unified.len() + 1);
    let mut wire = String::with_capacity(raw.len() + 1);
    for (start, segment) in &kept {
        path.push('/');
        path.push_str(segment);
        wire.push('/');
        for (j, b) in segment.bytes().enumerate() {
            if b == b';' && raw_semicolon[start + j] {
                wire.push(';');
            } else {
                encode_byte(b, &mut wire);
            }
        }
    }
    if path.is_empty() || trailing {
        path.push('/');
        wire.push('/');
    }
    let as_sent = !escapes_structure && !raw.contains(['\\', ';']) && decoded == path;
    Ok(RequestPath {
        decoded: path,
        wire,
        as_sent,
    })
}

/// The decoded, resolved path of [`parse`]: what the access rules match.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    parse(raw).map(|p| p.decoded)
}

/// Whether every common upstream reads this normalized path as the rules do, so a rule may
/// let it through without a session. A `;` is a path parameter to Tomcat, Jetty and Spring
/// (`/x;.png` is `/x`) and a character to nginx, Go, Node and Python; an escape left after
/// the one decoding (`%2e`, from `%252e`) is a dot to an application that decodes again.
pub fn unambiguous(path: &str) -> bool {
    !path.contains(';')
        && !path
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// `path` with the path parameters of every segment removed and the segments they leave
/// empty dropped: the path a servlet container maps (`/api;v=1/x` is `/api/x`).
pub fn without_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for name in path.split('/').map(|s| s.split(';').next().unwrap_or("")).filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(name);
    }
    if out.is_empty() || path.ends_with('/') {
        out.push('/');
    }
    out
}

/// The normalized path as it goes upstream: everything but unreserved characters, sub-delims
/// other than `;`, `:`, `@` and `/` percent-encoded, so `%`, `?`, `#`, spaces and `;` can
/// never change its meaning. ([`RequestPath::wire`] keeps the client's raw `;` as well.)
pub fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        encode_byte(b, &mut out);
    }
    out
}

fn encode_byte(b: u8, out: &mut String) {
    if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b) {
        out.push(b as char);
    } else {
        out.push_str(&format!("%{b:02X}"));
    }
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

    /// Whether this request goes upstream without a session. `path` must be normalized, and
    /// what goes upstream must be exactly that path ([`RequestPath::wire`]). A path that
    /// upstreams read differently ([`unambiguous`]) never skips, whatever the rules say.
    pub fn skips(&self, method: &Method, path: &str) -> bool {
        if self.skip_preflight && method == Method::OPTIONS {
            return true;
        }
        unambiguous(path)
            && self.skip.iter().any(|r| {
                let method_ok = match &r.method {
                    None => true,
                    Some((m, negate)) => (m == method) != *negate,
                };
                method_ok && r.path.is_match(path)
            })
    }

    /// For forward-auth, where the front end sends the app the path as the client sent it
    /// (`X-Forwarded-Uri`, Envoy's `/oauth2/auth/<path>`), not one the proxy normalized: the
    /// path skips only when it already was its normalized form ([`RequestPath::as_sent`]).
    pub fn skips_as_sent(&self, method: &Method, path: &RequestPath) -> bool {
        if self.skip_preflight && method == Method::OPTIONS {
            return true;
        }
        path.as_sent && self.skips(method, &path.decoded)
    }

    /// Whether an unauthenticated request gets 401 instead of the sign-in flow: the path,
    /// or the path a servlet container maps it to, matches an API route. Either way the
    /// request needs a session; this only picks the answer.
    pub fn is_api(&self, path: &str) -> bool {
        let bare = without_parameters(path);
        self.api.iter().any(|r| r.is_match(path) || r.is_match(&bare))
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
        assert_eq!(encode("/a;b"), "/a%3Bb", "a decoded `;` never goes upstream raw");
    }

    #[test]
    fn servlet_path_parameters_and_dot_segments() {
        // A segment that is `.` or `..` before its first `;` is a dot segment, in any
        // encoding, as Tomcat resolves it; other segments keep their parameters.
        for (raw, want) in [
            ("/public/..;/private", "/private"),
            ("/public/%2e%2e;/private", "/private"),
            ("/public/%2E%2E;/private", "/private"),
            ("/public/.%2e;/private", "/private"),
            ("/public/..%3b/private", "/private"),
            ("/public/..%3B/private", "/private"),
            ("/public/x/..;/..;/private", "/private"),
            ("/public/.;/..;/private", "/private"),
            ("/public/..;foo/private", "/private"),
            ("/public/..;jsessionid=1/private", "/private"),
            ("/public/..;%2fprivate", "/private"),
            ("/public/..;\\..;/private", "/private"),
            ("/a/.;jsessionid=1/b", "/a/b"),
            ("/a;x/../b", "/b"),
            ("/a;/../b", "/b"),
            ("/a/..;", "/"),
            ("/a/b/.;x", "/a/b/"),
            ("/..;/..;/etc", "/etc"),
            ("/a/b;c=d", "/a/b;c=d"),
            ("/a;x=1/b", "/a;x=1/b"),
            ("/a/...;x", "/a/...;x"),
            ("/a/;x/b", "/a/;x/b"),
            ("/a/x%3B.png", "/a/x;.png"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
        // What goes upstream: a raw `;` stays raw (Tomcat's `;jsessionid=`), an escaped one
        // stays escaped, and the dot segments are gone in every form.
        for (raw, wire) in [
            ("/a;jsessionid=1/b%3Bc", "/a;jsessionid=1/b%3Bc"),
            ("/a/..%3b/b%3b.png", "/b%3B.png"),
            ("/x/%2e%2e;y/z", "/z"),
            ("/public/x/..;/..;/private/secret.txt", "/private/secret.txt"),
            ("/a b/c%2fd", "/a%20b/c/d"),
            ("/p;a%3Bb;c", "/p;a%3Bb;c"),
        ] {
            let p = parse(raw).unwrap();
            assert_eq!(p.wire, wire, "{raw}");
            let again = parse(&p.wire).unwrap();
            assert_eq!((&again.decoded, &again.wire), (&p.decoded, &p.wire), "{raw}: idempotent");
        }
    }

    #[test]
    fn only_paths_every_upstream_reads_alike_can_skip() {
        for path in ["/", "/public/x", "/100%", "/a%zz", "/caf\u{e9}"] {
            assert!(unambiguous(path), "{path}");
        }
        for path in ["/public/x;y", "/private/x;.png", "/public/%2e%2e/private", "/public/%2F", "/a;"] {
            assert!(!unambiguous(path), "{path}");
        }
        let r = AccessRoutes::new(&["GET=^/public/".into()], &["\\.png$".into()], &["^/api/".into()], false).unwrap();
        let path = |raw: &str| normalize(raw).unwrap();
        assert!(r.skips(&Method::GET, &path("/public/hello.txt")));
        assert!(r.skips(&Method::GET, &path("/img/logo.png")));
        for raw in [
            "/public/..;/private/secret.txt",
            "/public/..%3b/private/secret.txt",
            "/private/secret.txt;.png",
            "/private/secret.txt;jsessionid=1.png",
            "/private/secret.txt%3b.png",
            "/public;x=1/hello.txt",
            "/public/hello.txt;jsessionid=1",
            "/public/%252e%252e/private",
        ] {
            assert!(!r.skips(&Method::GET, &path(raw)), "{raw}");
        }
        // Forward-auth: the front end sends the app the path as the client sent it, so it
        // must already be the normalized path.
        for raw in ["/public/hello.txt", "/public/logo%20v2.png", "/public/a%2Ejs", "/img/x.png"] {
            let p = parse(raw).unwrap();
            assert!(p.as_sent && r.skips_as_sent(&Method::GET, &p), "{raw}");
        }
        for raw in [
            "/%2e%2e/public/x",
            "/private/../public/x",
            "/private/..;/public/x",
            "/private/%2e%2e;/public/x",
            "/private/..%3b/public/x",
            "//public/x",
            "/public/./x",
            "/public/x/.",
            "/public%2fx",
            "/public/x%5cy",
            "/public\\x",
            "/public/x;y",
            "/public/x%3By",
            "/public/%2525",
            "/img/x.png;.png",
        ] {
            let p = parse(raw).unwrap();
            assert!(!p.as_sent && !r.skips_as_sent(&Method::GET, &p), "{raw}");
        }
        let pre = AccessRoutes::new(&[], &[], &[], true).unwrap();
        assert!(
            pre.skips_as_sent(&Method::OPTIONS, &parse("/a/..;/b").unwrap()),
            "preflight skips any path"
        );
        // API routes: a 401 also for the path a servlet container maps (both need a session).
        assert!(r.is_api(&path("/api;v=1/items")));
        assert!(r.is_api(&path("/;x/api/items")));
        assert!(!r.is_api(&path("/app;api/")));
        assert_eq!(without_parameters("/a;x/b;y/"), "/a/b/");
        assert_eq!(without_parameters("/;x"), "/");
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

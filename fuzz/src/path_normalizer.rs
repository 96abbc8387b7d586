//! The path the access rules match: normalized once, with no way left to mean another path
//! (no dot segments in any form, `..;` and `.;x` included; no empty segments, backslashes or
//! controls), the path sent upstream decodes back to exactly what the rules saw, and
//! normalizing it again changes nothing. A `;` the client sent as `%3B` never goes upstream
//! raw.
//!
//! Then the rule the proxy promises, against small independent models of how common
//! upstreams read a path: whenever a skip rule may let a path through without a session
//! (`unambiguous`), a servlet container (Tomcat, Jetty, Spring), a literal reader (nginx, Go,
//! Node, Python) and a raw-path router (Express, many Go routers) all read the path the proxy
//! forwards as exactly the path the rule matched, or refuse it; for forward-auth, where the
//! front end forwards the client's own bytes (`as_sent`), they read those the same way.

use sidekey_proxy::routes::{encode, normalize, parse, unambiguous};

pub fn check(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else { return };
    // As the proxy calls it: the query and fragment are never part of the path.
    let raw = input.split(['?', '#']).next().unwrap_or("");
    let Ok(p) = parse(raw) else { return };
    let path = p.decoded.as_str();
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    let inner = path.strip_suffix('/').unwrap_or(path);
    assert!(
        path == "/"
            || inner[1..].split('/').all(|s| {
                let name = s.split(';').next().unwrap_or("");
                !s.is_empty() && name != "." && name != ".."
            }),
        "a dot or empty segment survived: {raw:?} -> {path:?}"
    );
    assert!(!path.contains('\\') && !path.chars().any(char::is_control), "{raw:?} -> {path:?}");
    assert_eq!(normalize(raw).as_deref(), Ok(path));

    // Upstream: decodes back to the rules' path; normalizing it again is a no-op.
    let again = parse(&p.wire).unwrap_or_else(|e| panic!("{raw:?}: upstream {:?} does not parse: {e}", p.wire));
    assert_eq!(
        (again.decoded.as_str(), again.wire.as_str()),
        (path, p.wire.as_str()),
        "{raw:?}: not idempotent"
    );
    assert_eq!(normalize(&encode(path)).as_deref(), Ok(path), "{raw:?}");
    // Every raw `;` upstream is one the client sent raw: `%3B` stays an escape.
    assert!(
        p.wire.matches(';').count() <= raw.matches(';').count(),
        "{raw:?}: upstream {:?} has a `;` the client escaped",
        p.wire
    );
    assert!(!encode(path).contains(';'));

    if unambiguous(path) {
        assert!(!path.contains(';') && !p.wire.contains(';'), "{raw:?}");
        for (who, read) in [
            ("servlet container", servlet(&p.wire)),
            ("literal", literal(&p.wire)),
            ("raw router", raw_router(&p.wire)),
        ] {
            if let Some(read) = read {
                assert_eq!(read, path, "{raw:?}: a {who} reads the forwarded {:?} as another path", p.wire);
            }
        }
        if p.as_sent {
            for (who, read) in [
                ("servlet container", servlet(raw)),
                ("literal", literal(raw)),
                ("raw router", raw_router(raw)),
            ] {
                if let Some(read) = read {
                    assert_eq!(read, path, "forward-auth: a {who} reads {raw:?} as another path");
                }
            }
        }
    }
}

/// Percent-decoding as upstreams do it; `None` for a malformed escape or non-UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 3986 dot-segment removal with `//` merged (nginx `merge_slashes`, Tomcat, Go's
/// `path.Clean`); `None` above the root, where Tomcat and nginx answer 400.
fn resolve(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    let mut last_dot = false;
    for s in path.split('/') {
        last_dot = matches!(s, "." | "..");
        match s {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let mut r = format!("/{}", out.join("/"));
    if (path.ends_with('/') || last_dot) && r.len() > 1 {
        r.push('/');
    }
    Some(r)
}

/// Tomcat's reading (Jetty and Spring's `UrlPathHelper` alike): path parameters removed
/// from every segment of the undecoded path, then decoded (encoded `/` and `\` refused),
/// then dot segments resolved.
fn servlet(raw: &str) -> Option<String> {
    let stripped: Vec<&str> = raw.split('/').map(|s| s.split(';').next().unwrap_or("")).collect();
    let stripped = stripped.join("/");
    let lower = stripped.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || stripped.contains('\\') {
        return None;
    }
    resolve(&decode(&stripped)?)
}

/// nginx, Go, Node and Python: `;` is a character; decoded, dot segments resolved.
fn literal(raw: &str) -> Option<String> {
    resolve(&decode(raw)?)
}

/// A router matching the request's path as sent, segment by segment (Express, gorilla/mux
/// without cleaning): nothing resolved, each segment decoded.
fn raw_router(raw: &str) -> Option<String> {
    if raw.contains('\\') {
        return None;
    }
    decode(raw)
}

//! The session value in cookies: split into numbered chunks when it would not fit in one
//! cookie (browsers cap a cookie near 4 KB), reassembled on the way in, stale chunks cleared,
//! and all of the proxy's own cookies removed before a request goes upstream.

use http::{HeaderMap, HeaderValue, header};

use crate::config::{CookieConfig, SameSite};

/// Largest `name=value` pair we put in one cookie; leaves room for attributes under 4096.
pub const MAX_COOKIE_PAIR: usize = 4000 - 200;

/// The request's cookies, parsed once. HTTP/2 clients may send several `Cookie` headers.
#[derive(Debug, Default)]
pub struct RequestCookies<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> RequestCookies<'a> {
    pub fn parse(headers: &'a HeaderMap) -> Self {
        let mut pairs = Vec::new();
        for value in headers.get_all(header::COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            for part in value.split(';') {
                if let Some((name, val)) = part.trim().split_once('=') {
                    pairs.push((name.trim(), val.trim().trim_matches('"')));
                }
            }
        }
        RequestCookies { pairs }
    }

    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    pub fn names(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.pairs.iter().map(|(n, _)| *n)
    }

    /// The session value: the single cookie `name`, or `name_0`, `name_1`, ... joined.
    pub fn session_value(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string).or_else(|| self.chunked_value(name))
    }

    /// Both forms when the browser has both. A front end that passes on only the first
    /// `Set-Cookie` of a response (nginx `auth_request`) can leave a stale form behind, so
    /// the caller opens each and keeps the newer session.
    pub fn session_values(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(str::to_string)
            .into_iter()
            .chain(self.chunked_value(name))
            .collect()
    }

    /// Every value a request names as its session: each cookie called `name` (a browser
    /// sends one per domain and path it holds one for) and the chunked form. Ending a
    /// session ends all of them, not just the one [`Self::session_values`] would open.
    pub fn every_session_value(&self, name: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
            .chain(self.chunked_value(name))
            .collect()
    }

    fn chunked_value(&self, name: &str) -> Option<String> {
        let mut joined = String::new();
        for i in 0.. {
            match self.get(&chunk_name(name, i)) {
                Some(v) => joined.push_str(v),
                None if i == 0 => return None,
                None => break,
            }
        }
        Some(joined)
    }
}

pub fn chunk_name(name: &str, i: usize) -> String {
    format!("{name}_{i}")
}

/// True for the session cookie, its chunks, and CSRF cookies: never sent upstream.
pub fn is_proxy_cookie(cookie_name: &str, candidate: &str) -> bool {
    let Some(rest) = candidate.strip_prefix(cookie_name) else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix('_')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        || rest.ends_with("_csrf")
}

/// The `Cookie` header to send upstream without the proxy's cookies, or `None` to leave the
/// request's as they are. Every other cookie goes on exactly as the client sent it: its
/// quotes, spacing, a pair without `=`, bytes that are not UTF-8. Only our own pairs are cut
/// out, and several `Cookie` headers (HTTP/2) become one, joined by `; ` (RFC 9113 8.2.3).
pub fn strip_proxy_cookies(headers: &HeaderMap, cookie_name: &str) -> Option<Option<HeaderValue>> {
    let ours = |segment: &[u8]| {
        let Some(eq) = memchr::memchr(b'=', segment) else {
            return false;
        };
        std::str::from_utf8(&segment[..eq]).is_ok_and(|name| is_proxy_cookie(cookie_name, name.trim()))
    };
    let values: Vec<&HeaderValue> = headers.get_all(header::COOKIE).iter().collect();
    if !values.iter().any(|v| pairs(v.as_bytes()).any(ours)) {
        return None; // nothing to change
    }
    let mut out: Vec<u8> = Vec::new();
    for value in values {
        let mut first = true;
        for segment in pairs(value.as_bytes()).filter(|s| !ours(s)) {
            // The header's first pair loses the space that followed the `;` cut before it.
            let segment = if first { segment.trim_ascii_start() } else { segment };
            if first {
                if segment.trim_ascii().is_empty() {
                    continue;
                }
                if !out.is_empty() {
                    out.extend_from_slice(b"; ");
                }
                first = false;
            } else {
                out.push(b';');
            }
            out.extend_from_slice(segment);
        }
    }
    let out = out.trim_ascii_end();
    Some(if out.is_empty() {
        None
    } else {
        Some(HeaderValue::from_bytes(out).expect("pieces of header values are header value bytes"))
    })
}

/// The `;`-separated pieces of a `Cookie` header, as `<[u8]>::split` gives them, found with
/// memchr: a session cookie is 1-4 KiB, and this runs on every request.
fn pairs(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > bytes.len() {
            return None;
        }
        let end = memchr::memchr(b';', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        let segment = &bytes[start..end];
        start = end + 1;
        Some(segment)
    })
}

/// Cookie attributes for one response, with the domain chosen for the request's host.
pub struct CookieWriter<'c> {
    cfg: &'c CookieConfig,
    domain: Option<&'c str>,
}

impl<'c> CookieWriter<'c> {
    pub fn new(cfg: &'c CookieConfig, request_host: &str) -> Self {
        CookieWriter {
            cfg,
            domain: cookie_domain(&cfg.domains, request_host),
        }
    }

    fn build(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        self.build_with(name, value, max_age, self.cfg.samesite)
    }

    fn build_with(&self, name: &str, value: &str, max_age: Option<u64>, samesite: SameSite) -> HeaderValue {
        let mut c = cookie::Cookie::new(name, value);
        c.set_path(self.cfg.path.clone());
        if let Some(d) = self.domain {
            c.set_domain(d.to_string());
        }
        c.set_secure(self.cfg.secure);
        c.set_http_only(self.cfg.httponly);
        c.set_same_site(match samesite {
            SameSite::Unset => None,
            SameSite::Lax => Some(cookie::SameSite::Lax),
            SameSite::Strict => Some(cookie::SameSite::Strict),
            SameSite::None => Some(cookie::SameSite::None),
        });
        match max_age {
            Some(0) => c.make_removal(),
            Some(secs) => c.set_max_age(cookie::time::Duration::seconds(secs.min(i64::MAX as u64) as i64)),
            None => {}
        }
        HeaderValue::from_str(&c.encoded().to_string()).expect("cookie names and base64url values are valid header text")
    }

    pub fn set(&self, name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
        self.build(name, value, Some(max_age_secs.max(1)))
    }

    /// Like [`set`](Self::set) with the SameSite attribute adjusted.
    pub fn set_with_samesite(&self, name: &str, value: &str, max_age_secs: u64, adjust: impl Fn(SameSite) -> SameSite) -> HeaderValue {
        self.build_with(name, value, Some(max_age_secs.max(1)), adjust(self.cfg.samesite))
    }

    pub fn clear(&self, name: &str) -> HeaderValue {
        self.build(name, "", Some(0))
    }

    /// Set-Cookie headers for a session value, chunked when needed, clearing every session
    /// cookie the browser sent that this value does not overwrite.
    pub fn set_session(&self, existing: &RequestCookies, value: &str, max_age_secs: u64) -> Vec<HeaderValue> {
        let name = &self.cfg.name;
        let room = MAX_COOKIE_PAIR.saturating_sub(name.len() + 4);
        let mut out = Vec::new();
        let mut written: Vec<String> = Vec::new();
        if value.len() + name.len() < MAX_COOKIE_PAIR {
            out.push(self.set(name, value, max_age_secs));
            written.push(name.clone());
        } else {
            // base64url is ASCII, so byte chunks are character chunks.
            for (i, chunk) in value.as_bytes().chunks(room).enumerate() {
                let n = chunk_name(name, i);
                out.push(self.set(&n, std::str::from_utf8(chunk).expect("ASCII"), max_age_secs));
                written.push(n);
            }
        }
        out.extend(self.clear_stale(existing, &written));
        out
    }

    /// Clears the session cookie and all its chunks that the browser sent.
    pub fn clear_session(&self, existing: &RequestCookies) -> Vec<HeaderValue> {
        self.clear_stale(existing, &[])
    }

    fn clear_stale(&self, existing: &RequestCookies, keep: &[String]) -> Vec<HeaderValue> {
        existing
            .names()
            .filter(|n| is_proxy_cookie(&self.cfg.name, n) && !n.ends_with("_csrf") && !keep.iter().any(|k| k == n))
            .map(|n| self.clear(n))
            .collect()
    }
}

/// The most specific configured domain that the host equals or is a subdomain of; `None`
/// (a host-only cookie) when none matches.
pub fn cookie_domain<'d>(domains: &'d [String], host: &str) -> Option<&'d str> {
    let host = host_without_port(host).to_ascii_lowercase();
    domains
        .iter()
        .filter(|d| host == **d || host.strip_suffix(d.as_str()).is_some_and(|p| p.ends_with('.')))
        .max_by_key(|d| d.len())
        .map(String::as_str)
}

pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    host.rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::Duration;

    #[test]
    fn pairs_split_as_the_slice_split_does() {
        for text in ["", ";", "a", "a;", ";a", "a=1; b=2", "a=1;;b", " ; ; ", "x=\"q;\"; y"] {
            let ours: Vec<&[u8]> = pairs(text.as_bytes()).collect();
            let std: Vec<&[u8]> = text.as_bytes().split(|b| *b == b';').collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    fn mk_cfg() -> CookieConfig {
        CookieConfig {
            name: "_oauth2_proxy".into(),
            secret: Secret::new(vec![0; 32]),
            refresh: Duration::ZERO,
            domains: vec!["example.com".into(), "app.example.com".into()],
            path: "/".into(),
            expire: Duration::from_secs(3600),
            secure: true,
            httponly: true,
            samesite: SameSite::Lax,
            csrf_per_request: false,
            csrf_expire: Duration::from_secs(900),
            minimal: false,
        }
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn picks_the_most_specific_domain_at_a_dot_boundary() {
        let d = vec!["example.com".to_string(), "app.example.com".to_string()];
        assert_eq!(cookie_domain(&d, "app.example.com:8443"), Some("app.example.com"));
        assert_eq!(cookie_domain(&d, "x.app.example.com"), Some("app.example.com"));
        assert_eq!(cookie_domain(&d, "other.example.com"), Some("example.com"));
        assert_eq!(cookie_domain(&d, "badexample.com"), None);
        assert_eq!(cookie_domain(&d, "example.com.evil.net"), None);
    }

    #[test]
    fn small_values_use_one_cookie_and_clear_old_chunks() {
        let cfg = mk_cfg();
        let w = CookieWriter::new(&cfg, "app.example.com");
        let h = headers("_oauth2_proxy_0=a; _oauth2_proxy_1=b; other=1");
        let out = w.set_session(&RequestCookies::parse(&h), "small", 60);
        let text: Vec<_> = out.iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert!(text[0].starts_with("_oauth2_proxy=small;"), "{text:?}");
        assert!(
            text[0].contains("Domain=app.example.com")
                && text[0].contains("Secure")
                && text[0].contains("HttpOnly")
                && text[0].contains("SameSite=Lax")
        );
        assert_eq!(text.len(), 3);
        assert!(text[1].starts_with("_oauth2_proxy_0=;") && text[1].contains("Max-Age=0"));
        assert!(text[2].starts_with("_oauth2_proxy_1=;"));
    }

    #[test]
    fn large_values_are_chunked_and_reassembled() {
        let cfg = mk_cfg();
        let w = CookieWriter::new(&cfg, "app.example.com");
        let value: String = std::iter::repeat_n("abcdefghij", 900).collect();
        let h = headers("_oauth2_proxy=old");
        let out = w.set_session(&RequestCookies::parse(&h), &value, 60);
        let sets: Vec<_> = out.iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert_eq!(
            sets.len(),
            4,
            "three chunks and one clear: {:?}",
            sets.iter().map(|s| &s[..20]).collect::<Vec<_>>()
        );
        assert!(sets.iter().all(|s| s.len() < 4096));
        assert!(sets[3].starts_with("_oauth2_proxy=;"));
        let request: Vec<String> = sets[..3].iter().map(|s| s.split(';').next().unwrap().to_string()).collect();
        let h = headers(&request.join("; "));
        assert_eq!(RequestCookies::parse(&h).session_value("_oauth2_proxy"), Some(value));
    }

    #[test]
    fn proxy_cookies_never_go_upstream() {
        let h = headers(
            "a=1; _oauth2_proxy=s; _oauth2_proxy_0=x; _oauth2_proxy_12=y; _oauth2_proxy_csrf=c; _oauth2_proxy_ab12cd34_csrf=d; _oauth2_proxy_extra=keep; b=2",
        );
        let kept = strip_proxy_cookies(&h, "_oauth2_proxy").unwrap().unwrap();
        assert_eq!(kept, "a=1; _oauth2_proxy_extra=keep; b=2");
        assert_eq!(strip_proxy_cookies(&headers("_oauth2_proxy=s"), "_oauth2_proxy"), Some(None));
        assert_eq!(strip_proxy_cookies(&headers("a=1"), "_oauth2_proxy"), None);
    }

    #[test]
    fn the_apps_cookies_go_upstream_byte_for_byte() {
        let strip = |h: &HeaderMap| strip_proxy_cookies(h, "_oauth2_proxy").unwrap().map(|v| v.as_bytes().to_vec());
        for (sent, upstream) in [
            // Quotes are part of the value the app set; a pair without `=` is the app's too.
            (r#"q="a b"; _oauth2_proxy=s; flag; e="""#, r#"q="a b"; flag; e="""#),
            ("_oauth2_proxy=s; a=1;b=2 ;  c = 3", "a=1;b=2 ;  c = 3"),
            ("a=1; _oauth2_proxy_0=x; _oauth2_proxy_1=y", "a=1"),
            ("a=1;; _oauth2_proxy=s; =v", "a=1;; =v"),
            ("  _oauth2_proxy=s;   ", ""),
        ] {
            let want = (!upstream.is_empty()).then(|| upstream.as_bytes().to_vec());
            assert_eq!(strip(&headers(sent)), want, "{sent:?}");
        }
        // Not UTF-8: still forwarded, not dropped.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_bytes(b"n=caf\xe9; _oauth2_proxy=s").unwrap());
        assert_eq!(strip(&h), Some(b"n=caf\xe9".to_vec()));
        // Several headers (HTTP/2) become one, each header's pairs as they were.
        let mut h = headers("_oauth2_proxy=s; a=\"1\"");
        h.append(header::COOKIE, HeaderValue::from_static("b=2;c"));
        h.append(header::COOKIE, HeaderValue::from_static("_oauth2_proxy_csrf=t"));
        assert_eq!(strip(&h), Some(b"a=\"1\"; b=2;c".to_vec()));
        // A header without our cookies in any of them is left alone (several stay several).
        let mut h = headers("a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=\"2\""));
        assert_eq!(strip_proxy_cookies(&h, "_oauth2_proxy"), None);
    }

    #[test]
    fn both_forms_are_offered_when_a_stale_one_is_left_behind() {
        let h = headers("_oauth2_proxy=old; _oauth2_proxy_0=ne; _oauth2_proxy_1=w");
        let c = RequestCookies::parse(&h);
        assert_eq!(c.session_values("_oauth2_proxy"), vec!["old".to_string(), "new".to_string()]);
        assert_eq!(
            RequestCookies::parse(&headers("a=1")).session_values("_oauth2_proxy"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn several_cookie_headers_are_read() {
        let mut h = headers("a=1");
        h.append(header::COOKIE, HeaderValue::from_static("_oauth2_proxy=v"));
        assert_eq!(RequestCookies::parse(&h).session_value("_oauth2_proxy").as_deref(), Some("v"));
    }
}

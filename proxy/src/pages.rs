//! The HTML the proxy shows people: the sign-in, signed-out, access-denied and error pages.
//! Every interpolated value is HTML-escaped. Pages carry human sentences only: transport
//! errors and internal URLs go to the log under the request id the page shows.

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f4f5f7;color:#1d2330;margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}\
main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2.5rem 3rem;max-width:28rem;text-align:center}\
h1{font-size:1.4rem;margin:0 0 1rem}p{color:#4a5263;line-height:1.5}button{font-size:1rem;padding:.7rem 1.6rem;border:0;border-radius:8px;background:#2456d6;color:#fff;cursor:pointer}\
button:hover{background:#1b45b0}a.button{display:inline-block;text-decoration:none;font-size:1rem;padding:.7rem 1.6rem;border-radius:8px;background:#2456d6;color:#fff}\
a.button:hover{background:#1b45b0}footer{margin-top:1.5rem;font-size:.8rem;color:#8a91a0}code{background:#f0f1f4;padding:.1rem .3rem;border-radius:4px}";

fn page(title: &str, body: &str, footer: Option<&str>) -> String {
    let footer = match footer {
        Some("-") => String::new(),
        Some(f) => format!("<footer>{}</footer>", escape(f)),
        None => "<footer>Secured by sidekey</footer>".to_string(),
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex,nofollow\"><title>{}</title><style>{STYLE}</style></head><body><main>{body}{footer}</main></body></html>",
        escape(title)
    )
}

/// A GET form replaces its action's query string, so `rd` travels as a hidden field.
pub fn sign_in(start_path: &str, rd: &str, provider_name: &str, banner: Option<&str>, footer: Option<&str>) -> String {
    let banner = match banner {
        Some("-") => String::new(),
        Some(b) => format!("<p>{}</p>", escape(b)),
        None => "<p>You need to sign in to continue.</p>".to_string(),
    };
    page(
        "Sign in",
        &format!(
            "<h1>Sign in</h1>{banner}<form method=\"GET\" action=\"{}\"><input type=\"hidden\" name=\"rd\" value=\"{}\"><button type=\"submit\" id=\"sign-in\">Sign in with {}</button></form>",
            escape(start_path),
            escape(rd),
            escape(provider_name)
        ),
        footer,
    )
}

pub fn error(status: u16, title: &str, message: &str, request_id: &str, footer: Option<&str>) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1><p>{}</p>{}<p><a href=\"/\">Back to the start</a></p>",
            escape(title),
            escape(message),
            reference(status, request_id)
        ),
        footer,
    )
}

/// A signed-in account the access rules refuse. `switch_href` starts a new login that makes
/// the provider ask for an account again, so a shared or multi-account browser is not stuck.
pub fn denied(account: &str, reason: &str, switch_href: &str, request_id: &str, footer: Option<&str>) -> String {
    let who = if account.is_empty() {
        "<p>The account you signed in with may not use this application.</p>".to_string()
    } else {
        format!(
            "<p>You are signed in as <strong id=\"account\">{}</strong>, and this account may not use this application.</p>",
            escape(account)
        )
    };
    page(
        "Access denied",
        &format!(
            "<h1>Access denied</h1>{who}<p id=\"reason\">Reason: {}.</p><p>Ask the application's owner for access, or use another account.</p>\
             <p><a class=\"button\" id=\"switch-account\" href=\"{}\">Sign in as someone else</a></p>{}",
            escape(reason),
            escape(switch_href),
            reference(403, request_id)
        ),
        footer,
    )
}

/// Where sign-out lands when no `rd` was given.
pub fn signed_out(back_href: &str, footer: Option<&str>) -> String {
    page(
        "Signed out",
        &format!(
            "<h1>You are signed out</h1><p>Your session has ended. Close the browser if this is a shared computer.</p>\
             <p><a class=\"button\" id=\"sign-in-again\" href=\"{}\">Sign in again</a></p>",
            escape(back_href)
        ),
        footer,
    )
}

/// The line that lets an operator find the log entry for what a person saw.
fn reference(status: u16, request_id: &str) -> String {
    format!(
        "<p><small>Status {status} · request id <code id=\"request-id\">{}</code></small></p>",
        escape(request_id)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_everything_interpolated() {
        let html = super::sign_in("/oauth2/start", "/\"><script>", "<b>IdP</b>", Some("<img src=x>"), None);
        assert!(!html.contains("<script>") && !html.contains("<b>IdP") && !html.contains("<img"));
        assert!(html.contains("&lt;b&gt;IdP&lt;/b&gt;"));
        let html = super::denied("<i>x</i>@example.com", "<u>r</u>", "/oauth2/start?rd=%2F\"><script>", "<id>", None);
        assert!(!html.contains("<i>x") && !html.contains("<u>") && !html.contains("\"><script>") && !html.contains("<id>"));
        assert!(html.contains("&lt;i&gt;x&lt;/i&gt;@example.com"));
        let html = super::signed_out("/\"><script>", Some("<b>f</b>"));
        assert!(!html.contains("<script>") && !html.contains("<b>f"));
    }
}

//! Who may sign in: `email_domains`, `authenticated_emails_file` (plus its inline form `allowed_emails`) and `allowed_groups`,
//! with exact, case-insensitive comparisons.

use std::collections::HashSet;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("the email address is malformed")]
    MalformedEmail,
    #[error("the email address is not in an allowed domain or list")]
    EmailNotAllowed,
    #[error("the user is not in an allowed group")]
    GroupNotAllowed,
}

#[derive(Debug, Default)]
pub struct Authorizer {
    any_email: bool,
    domains: Vec<String>,
    emails: HashSet<String>,
    groups: HashSet<String>,
}

impl Authorizer {
    pub fn new(email_domains: &[String], emails: HashSet<String>, allowed_groups: &[String]) -> Self {
        Authorizer {
            any_email: email_domains.iter().any(|d| d == "*"),
            domains: email_domains.iter().filter(|d| *d != "*").map(|d| d.to_ascii_lowercase()).collect(),
            emails: emails.into_iter().map(|e| e.to_ascii_lowercase()).collect(),
            groups: allowed_groups.iter().cloned().collect(),
        }
    }

    /// Reads `authenticated_emails_file`: one address per line; blank lines and `#` comments skipped.
    pub fn read_emails_file(path: &Path) -> std::io::Result<HashSet<String>> {
        Ok(std::fs::read_to_string(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_ascii_lowercase)
            .collect())
    }

    pub fn authorize(&self, email: &str, groups: &[String]) -> Result<(), Denial> {
        self.check_email(email)?;
        if !self.groups.is_empty() && !groups.iter().any(|g| self.groups.contains(g)) {
            return Err(Denial::GroupNotAllowed);
        }
        Ok(())
    }

    fn check_email(&self, email: &str) -> Result<(), Denial> {
        if self.any_email && email.is_empty() {
            return Ok(());
        }
        let email = email.to_ascii_lowercase();
        // Exactly one @ with text on both sides: `a@b@c` would match two domains (CVE-2026-40574 class).
        let mut parts = email.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Denial::MalformedEmail);
        };
        if local.is_empty() || domain.is_empty() || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Denial::MalformedEmail);
        }
        if self.any_email || self.emails.contains(&email) {
            return Ok(());
        }
        let domain_ok = self.domains.iter().any(|d| match d.strip_prefix('.') {
            Some(base) => domain.strip_suffix(base).is_some_and(|p| p.ends_with('.')),
            None => domain == d,
        });
        if domain_ok { Ok(()) } else { Err(Denial::EmailNotAllowed) }
    }
}

/// Per-location constraints a front end adds to its `/oauth2/auth` URL
/// (`?allowed_groups=a,b&allowed_emails=x@y&allowed_email_domains=y`), on top of the
/// proxy-wide rules: one proxy can guard several apps with different audiences.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Constraints {
    groups: Vec<String>,
    emails: Vec<String>,
    domains: Vec<String>,
}

impl Constraints {
    pub fn from_query(query: Option<&str>) -> Constraints {
        let mut c = Constraints::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let target = match &*k {
                "allowed_groups" => &mut c.groups,
                "allowed_emails" => &mut c.emails,
                "allowed_email_domains" => &mut c.domains,
                _ => continue,
            };
            target.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string));
        }
        c
    }

    pub fn check(&self, email: &str, groups: &[String]) -> Result<(), Denial> {
        if !self.emails.is_empty() || !self.domains.is_empty() {
            let a = Authorizer::new(&self.domains, self.emails.iter().cloned().collect(), &[]);
            a.check_email(email)?;
        }
        if !self.groups.is_empty() && !groups.iter().any(|g| self.groups.contains(g)) {
            return Err(Denial::GroupNotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_constraints() {
        let none = Constraints::from_query(Some("rd=/x"));
        assert_eq!(none, Constraints::default());
        assert_eq!(none.check("", &[]), Ok(()));
        let g = Constraints::from_query(Some("allowed_groups=admins,%20ops"));
        assert_eq!(g.check("a@b.c", &["ops".into()]), Ok(()));
        assert_eq!(g.check("a@b.c", &["dev".into()]), Err(Denial::GroupNotAllowed));
        let e = Constraints::from_query(Some("allowed_emails=a@b.c&allowed_email_domains=corp.net"));
        assert_eq!(e.check("A@b.c", &[]), Ok(()));
        assert_eq!(e.check("z@corp.net", &[]), Ok(()));
        assert_eq!(e.check("z@badcorp.net", &[]), Err(Denial::EmailNotAllowed));
        assert_eq!(e.check("z@corp.net@evil.io", &[]), Err(Denial::MalformedEmail));
        let both = Constraints::from_query(Some("allowed_groups=admins&allowed_emails=a@b.c"));
        assert_eq!(both.check("a@b.c", &["dev".into()]), Err(Denial::GroupNotAllowed));
    }

    fn mk(domains: &[&str], emails: &[&str], groups: &[&str]) -> Authorizer {
        Authorizer::new(
            &domains.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            emails.iter().map(|s| s.to_string()).collect(),
            &groups.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn email_domains() {
        let a = mk(&["example.com", ".corp.net"], &[], &[]);
        assert_eq!(a.authorize("alice@example.com", &[]), Ok(()));
        assert_eq!(a.authorize("Alice@EXAMPLE.com", &[]), Ok(()));
        assert_eq!(a.authorize("bob@eu.corp.net", &[]), Ok(()));
        assert_eq!(a.authorize("bob@corp.net", &[]), Err(Denial::EmailNotAllowed));
        assert_eq!(a.authorize("eve@badexample.com", &[]), Err(Denial::EmailNotAllowed));
        assert_eq!(a.authorize("eve@sub.example.com", &[]), Err(Denial::EmailNotAllowed));
        assert_eq!(a.authorize("eve@evil.com@example.com", &[]), Err(Denial::MalformedEmail));
        assert_eq!(a.authorize("eve@example.com@evil.com", &[]), Err(Denial::MalformedEmail));
        assert_eq!(a.authorize("", &[]), Err(Denial::MalformedEmail));
        assert_eq!(a.authorize("@example.com", &[]), Err(Denial::MalformedEmail));
    }

    #[test]
    fn wildcard_emails_file_and_groups() {
        assert_eq!(mk(&["*"], &[], &[]).authorize("anyone@anywhere.io", &[]), Ok(()));
        assert_eq!(mk(&["*"], &[], &[]).authorize("a@b@c", &[]), Err(Denial::MalformedEmail));
        let a = mk(&[], &["carol@other.org"], &[]);
        assert_eq!(a.authorize("CAROL@other.org", &[]), Ok(()));
        assert_eq!(a.authorize("dave@other.org", &[]), Err(Denial::EmailNotAllowed));
        let g = mk(&["*"], &[], &["admins"]);
        assert_eq!(g.authorize("a@b.c", &["devs".into(), "admins".into()]), Ok(()));
        assert_eq!(g.authorize("a@b.c", &["Admins".into()]), Err(Denial::GroupNotAllowed));
        assert_eq!(g.authorize("a@b.c", &[]), Err(Denial::GroupNotAllowed));
    }
}

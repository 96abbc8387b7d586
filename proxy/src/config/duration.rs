//! Go's `time.ParseDuration` syntax, which every oauth2-proxy duration option uses:
//! a sequence of decimal numbers with units, e.g. `168h0m0s`, `1.5h`, `90s`, `300ms`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("missing unit after {0}; units are ns, us, ms, s, m, h")]
    MissingUnit(String),
    #[error("unknown unit `{0}`; units are ns, us, ms, s, m, h")]
    UnknownUnit(String),
    #[error("`{0}` is not a number")]
    BadNumber(String),
    #[error("duration too large")]
    Overflow,
}

/// As Go's, no surrounding space is allowed: oauth2-proxy refuses `" 1h"` too.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return Err(DurationError::BadNumber(rest.to_string()));
        }
        let value: f64 = num.parse().map_err(|_| DurationError::BadNumber(num.to_string()))?;
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(DurationError::MissingUnit(num.to_string())),
            other => return Err(DurationError::UnknownUnit(other.to_string())),
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| DurationError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("168h0m0s"), Ok(Duration::from_secs(168 * 3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_durations() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("-1h"), Err(DurationError::Negative));
        assert_eq!(parse("10"), Err(DurationError::MissingUnit("10".into())));
        assert_eq!(parse("10d"), Err(DurationError::UnknownUnit("d".into())));
        assert!(parse("h").is_err());
        assert!(parse("1..5h").is_err());
        assert!(parse(" 1h").is_err() && parse("1h ").is_err());
    }
}

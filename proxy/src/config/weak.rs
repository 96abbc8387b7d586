//! oauth2-proxy's value typing, reproduced so that every value it loads loads here too.
//!
//! oauth2-proxy binds each option to a pflag flag, reads the TOML file and `OAUTH2_PROXY_*`
//! through viper, and decodes the result with viper's mapstructure defaults:
//! `WeaklyTypedInput` plus the `StringToTimeDuration` and `StringToSlice(",")` hooks
//! (pkg/apis/options/load.go; spf13/viper `defaultDecoderConfig`). It registers no viper
//! defaults, so `SetTypeByDefaultValue` never converts anything: environment values reach
//! mapstructure as the raw text, exactly like a TOML string. Flags go through pflag's own
//! parsers instead. The rules, per kind:
//!
//! | kind | TOML value / environment text | flag |
//! |---|---|---|
//! | bool | bool; number (non-zero = true); string by Go's `strconv.ParseBool`, "" = false | `ParseBool` |
//! | int | int; float (truncated); bool (1/0); string by `ParseInt(s, 0, 64)`, "" = 0 | `ParseInt(s, 0, 64)` |
//! | duration | string by `time.ParseDuration` | `ParseDuration` |
//! | string | string; bool ("1"/"0"); number (decimal) | as given |
//! | list | array of strings, bools or numbers; a string split on ","; a bool or number as one item | each occurrence read as one CSV record |
//!
//! Where sidekey differs, on purpose: a bare number for a duration is refused, because
//! mapstructure stores it as nanoseconds (`cookie_expire = 604800` is 0.6 ms) — only 0 is
//! taken, as zero; a negative duration is refused; list items are trimmed and empty ones
//! dropped (oauth2-proxy keeps `" b.com"` from `"a.com, b.com"`, which then never matches).

use super::duration;
use super::load::Value;
use super::options::Kind;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WeakError {
    #[error("`{0}` is not a boolean; write true or false (also accepted, as Go reads them: 1, t, T, TRUE, True, 0, f, F, FALSE, False)")]
    NotBool(String),
    #[error("`{0}` is not a whole number; write it in digits, e.g. 30 (Go's 0x1e, 0o36, 0b11110 and 1_000 are accepted too)")]
    NotInt(String),
    #[error("{0} is out of range for a whole number")]
    IntRange(String),
    #[error("`{value}` is not a duration ({reason}); write it like 168h, 30m or 1h30m")]
    NotDuration { value: String, reason: duration::DurationError },
    #[error(
        "{0} has no unit: oauth2-proxy would read it as {0} nanoseconds; write the unit, e.g. \"{0}s\" or \"{0}h\" (a bare 0 is accepted)"
    )]
    BareDuration(String),
    #[error("expected {expected}, found {found}")]
    WrongType { expected: &'static str, found: String },
    #[error("`{value}` is not a comma-separated list: {reason}; quote an item that holds a comma, e.g. '\"a,b\",c'")]
    Csv { value: String, reason: &'static str },
}

/// A value from the TOML file, converted as viper's mapstructure decoder converts it.
pub fn from_toml(kind: Kind, item: &toml::Value) -> Result<Value, WeakError> {
    use toml::Value as T;
    Ok(match kind {
        Kind::Str => Value::Str(scalar_text(item).ok_or_else(|| wrong("a string", item))?),
        Kind::Bool => Value::Bool(match item {
            T::Boolean(b) => *b,
            T::Integer(i) => *i != 0,
            T::Float(f) => *f != 0.0,
            // mapstructure: an empty string is false, anything else goes to ParseBool.
            T::String(s) if s.is_empty() => false,
            T::String(s) => go_parse_bool(s).ok_or_else(|| WeakError::NotBool(s.clone()))?,
            _ => return Err(wrong("true or false", item)),
        }),
        Kind::Int => Value::Int(match item {
            T::Integer(i) => *i,
            T::Float(f) => float_to_int(*f)?,
            T::Boolean(b) => i64::from(*b),
            T::String(s) if s.is_empty() => 0,
            T::String(s) => go_parse_int(s)?,
            _ => return Err(wrong("a whole number", item)),
        }),
        Kind::Duration => Value::Str(match item {
            T::String(s) => checked_duration(s)?,
            T::Integer(0) => "0".into(),
            T::Float(f) if *f == 0.0 => "0".into(),
            T::Integer(i) => return Err(WeakError::BareDuration(i.to_string())),
            T::Float(f) => return Err(WeakError::BareDuration(go_format_float(*f))),
            _ => return Err(wrong("a duration such as \"168h\"", item)),
        }),
        Kind::List => Value::List(tidy(match item {
            T::Array(items) => items
                .iter()
                .map(|i| scalar_text(i).ok_or_else(|| wrong("an array of strings", i)))
                .collect::<Result<_, _>>()?,
            // The StringToSlice(",") hook, before mapstructure lifts a scalar into a list.
            T::String(s) => s.split(',').map(String::from).collect(),
            other => vec![scalar_text(other).ok_or_else(|| wrong("an array of strings", other))?],
        })),
    })
}

/// An `OAUTH2_PROXY_*` value. viper hands mapstructure the raw text, so it is read exactly
/// like a TOML string.
pub fn from_env(kind: Kind, raw: &str) -> Result<Value, WeakError> {
    from_toml(kind, &toml::Value::String(raw.to_string()))
}

/// Every occurrence of a flag, in order, as pflag parses them: the last one wins, except
/// for lists, which collect every occurrence.
pub fn from_flags(kind: Kind, raw: &[String]) -> Result<Value, WeakError> {
    let last = raw.last().map(String::as_str).unwrap_or_default();
    Ok(match kind {
        Kind::Str => Value::Str(last.to_string()),
        Kind::Bool => Value::Bool(go_parse_bool(last).ok_or_else(|| WeakError::NotBool(last.to_string()))?),
        Kind::Int => Value::Int(go_parse_int(last)?),
        Kind::Duration => Value::Str(checked_duration(last)?),
        Kind::List => {
            let mut items = Vec::new();
            for r in raw {
                items.extend(csv_record(r)?);
            }
            Value::List(tidy(items))
        }
    })
}

fn wrong(expected: &'static str, found: &toml::Value) -> WeakError {
    WeakError::WrongType {
        expected,
        found: match found {
            toml::Value::Array(_) => "an array".into(),
            toml::Value::Table(_) => "a table".into(),
            other => other.type_str().to_string(),
        },
    }
}

/// mapstructure's weak `decodeString`: booleans become "1"/"0", numbers their decimal text.
fn scalar_text(item: &toml::Value) -> Option<String> {
    match item {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Boolean(b) => Some(if *b { "1" } else { "0" }.into()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(go_format_float(*f)),
        _ => None,
    }
}

fn tidy(items: Vec<String>) -> Vec<String> {
    items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

fn checked_duration(s: &str) -> Result<String, WeakError> {
    duration::parse(s).map_err(|reason| WeakError::NotDuration {
        value: s.to_string(),
        reason,
    })?;
    Ok(s.to_string())
}

/// Go's `int64(f)`, refusing what Go leaves undefined (NaN, infinities, out of range).
fn float_to_int(f: f64) -> Result<i64, WeakError> {
    let t = f.trunc();
    if t.is_finite() && t >= i64::MIN as f64 && t < i64::MAX as f64 {
        Ok(t as i64)
    } else {
        Err(WeakError::IntRange(go_format_float(f)))
    }
}

/// Go's `strconv.FormatFloat(f, 'f', -1, 64)`; Rust's shortest round-trip text matches it.
fn go_format_float(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        f.to_string()
    }
}

/// Go's `strconv.ParseBool`: exactly these spellings, no surrounding space.
pub fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: an optional sign, then decimal, `0x` hex, `0o`/`0`
/// octal or `0b` binary, with `_` allowed between digits.
pub fn go_parse_int(s: &str) -> Result<i64, WeakError> {
    let bad = || WeakError::NotInt(s.to_string());
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let bytes = unsigned.as_bytes();
    let (radix, digits) = match bytes {
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'x') => (16, &unsigned[2..]),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'o') => (8, &unsigned[2..]),
        [b'0', p, _, ..] if p.eq_ignore_ascii_case(&b'b') => (2, &unsigned[2..]),
        [b'0', ..] => (8, &unsigned[1..]),
        [] => return Err(bad()),
        _ => (10, unsigned),
    };
    let mut magnitude: u64 = 0;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        let d = c.to_digit(radix).ok_or_else(bad)?;
        magnitude = magnitude
            .checked_mul(u64::from(radix))
            .and_then(|m| m.checked_add(u64::from(d)))
            .ok_or_else(|| WeakError::IntRange(s.to_string()))?;
    }
    if digits.contains('_') && !go_underscores_ok(unsigned) {
        return Err(bad());
    }
    let limit = if negative { 1u64 << 63 } else { (1u64 << 63) - 1 };
    if magnitude > limit {
        return Err(WeakError::IntRange(s.to_string()));
    }
    Ok(if negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    })
}

/// Go's `underscoreOK`: each `_` sits between two digits (a base prefix counts as one).
fn go_underscores_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = b.len() >= 2 && b[0] == b'0' && b[1].eq_ignore_ascii_case(&b'x');
    let prefixed = b.len() >= 2 && b[0] == b'0' && matches!(b[1].to_ascii_lowercase(), b'b' | b'o' | b'x');
    let (mut saw, rest) = if prefixed { (b'0', &b[2..]) } else { (b'^', b) };
    for &c in rest {
        if c.is_ascii_digit() || (hex && c.is_ascii_hexdigit()) {
            saw = b'0';
        } else if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
        } else {
            if saw == b'_' {
                return false;
            }
            saw = b'!';
        }
    }
    saw != b'_'
}

/// One record of Go's `encoding/csv` reader, which pflag uses for every string-slice flag:
/// `"` quotes an item (`""` inside is a literal quote), so `--skip-auth-regex='"^/a{1,2}$"'`
/// keeps its comma.
fn csv_record(s: &str) -> Result<Vec<String>, WeakError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let fail = |reason| WeakError::Csv {
        value: s.to_string(),
        reason,
    };
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(fail("a quoted item has no closing \"")),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(_) => return Err(fail("text follows a closing \"")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(fail("a \" inside an unquoted item")),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
#[path = "weak_tests.rs"]
mod tests;

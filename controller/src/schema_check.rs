//! The API server's verdict on a raw AuthPolicy, offline: the CRD's own `openAPIV3Schema`
//! (from [`AuthPolicy::crd`], so the schema has one source) applied to the object as parsed
//! from YAML, before any typed deserialization, in the order kube-apiserver applies it to
//! `kubectl apply --server-side`:
//!
//! 1. server-side apply's typed patch: unknown fields and wrong JSON types. When any is found
//!    the server answers with these alone, and so does [`Checker::check`];
//! 2. defaulting: schema `default`s fill absent fields, `null` drops a nullable field and
//!    becomes the default of a non-nullable one;
//! 3. the schema's value checks (required, enum, lengths, item counts, bounds, int-or-string)
//!    and the object name, on the object without `status` (the status subresource drops it);
//! 4. the `x-kubernetes-validations` CEL rules, with kube's own evaluator
//!    ([`kube::core::cel::Validator`]), unless step 3 found a wrong type, a missing field, a
//!    value outside an enum, or a string or list over its maximum: the server skips them then.
//!
//! The server reports sibling fields in Go map order, which varies from call to call; this
//! reports them sorted, and every unknown field where the server names one per object.
//!
//! Every message is the server's text (captured from kube-apiserver v1.36.2), so what
//! `sidekey-controller validate` prints is what `kubectl apply` would.
//!
//! Why a walker of our own: no crate on crates.io validates against a Kubernetes structural
//! schema with the API server's semantics. General JSON-Schema validators (`jsonschema`) know
//! neither the `x-kubernetes-*` extensions, nor defaulting before validation, nor the
//! server's messages; kube-cel (which kube re-exports) covers CEL and defaults only. The
//! walker handles the keyword subset our CRD uses, and a unit test fails when the CRD starts
//! using one it does not know.

use std::sync::LazyLock;

use kube::core::cel::{ErrorKind, Validator};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::api::AuthPolicy;

/// One finding, printed exactly as the API server prints it.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SchemaError {
    /// Server-side apply found a field the schema does not declare.
    #[error(".{path}: field not declared in schema")]
    UnknownField { path: String },
    /// Server-side apply found a value of the wrong JSON type. `got` is in Go's notation.
    #[error(".{path}: expected {expected}, got {got}")]
    WrongType { path: String, expected: &'static str, got: String },
    /// A `null` (or a float, or a bad int-or-string) that the schema's type check refuses.
    #[error("{path}: Invalid value: \"{got}\": {path} in body must be of type {expected}: \"{got}\"")]
    InvalidType { path: String, expected: String, got: String },
    #[error("{path}: Required value")]
    Required { path: String },
    #[error("{path}: Unsupported value: {value}: supported values: {supported}")]
    Unsupported { path: String, value: String, supported: String },
    #[error("{path}: Too long: may not be more than {max} bytes")]
    TooLong { path: String, max: u64 },
    #[error("{path}: Invalid value: {value}: {path} in body should be at least {min} chars long")]
    TooShort { path: String, value: String, min: u64 },
    #[error("{path}: Too many: {count}: must have at most {max} items")]
    TooMany { path: String, count: usize, max: u64 },
    #[error("{path}: Invalid value: {count}: {path} in body should have at least {min} items")]
    TooFew { path: String, count: usize, min: u64 },
    /// `minimum`/`maximum`; `bound` reads "greater than or equal to 10" and the like.
    #[error("{path}: Invalid value: {value}: {path} in body should be {bound}")]
    OutOfRange { path: String, value: String, bound: String },
    /// The server's integer-format check.
    #[error("<nil>: Invalid value: \"\": Checked value must be of type integer with format {format} in {path}")]
    Format { path: String, format: String },
    #[error("metadata.name: Required value: name or generateName is required")]
    NameRequired,
    #[error("metadata.name: Invalid value: {value}: {message}")]
    InvalidName { value: String, message: String },
    /// A CEL rule failed. Scalars show their value, objects and lists do not, as on the server.
    #[error("{path}: Invalid value: {}{message}", .value.as_deref().map(|v| format!("{v}: ")).unwrap_or_default())]
    Rule {
        path: String,
        value: Option<String>,
        message: String,
    },
}

impl SchemaError {
    /// Whether the server skips the CEL rules because of this finding. Its list: wrong type,
    /// required, enum, maxLength, maxItems; a value under a minimum or a bad format is
    /// reported alongside the rules' findings.
    fn blocks_cel(&self) -> bool {
        matches!(
            self,
            SchemaError::UnknownField { .. }
                | SchemaError::WrongType { .. }
                | SchemaError::InvalidType { .. }
                | SchemaError::Required { .. }
                | SchemaError::Unsupported { .. }
                | SchemaError::TooLong { .. }
                | SchemaError::TooMany { .. }
        )
    }
}

/// The outcome of [`Checker::check`].
#[derive(Debug, Clone)]
pub struct Checked {
    /// The object as the server would store it: defaults applied, nulls resolved, whole
    /// floats made integers. Meaningful only when `errors` is empty.
    pub object: Value,
    pub errors: Vec<SchemaError>,
}

/// A schema and the CEL evaluator, set up once for many objects.
pub struct Checker {
    schema: Value,
    cel: Validator,
}

static AUTH_POLICY_SCHEMA: LazyLock<Value> = LazyLock::new(|| {
    use kube::CustomResourceExt;
    let crd = AuthPolicy::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("the derived CRD has an openAPIV3Schema");
    serde_json::to_value(schema).expect("the schema serializes")
});

impl Checker {
    /// The checker for `AuthPolicy`, from the CRD the controller generates.
    pub fn auth_policy() -> Checker {
        Checker::new(AUTH_POLICY_SCHEMA.clone())
    }

    /// A checker for any CRD version's `openAPIV3Schema`.
    pub fn new(schema: Value) -> Checker {
        Checker {
            schema,
            cel: Validator::new(),
        }
    }

    pub fn check(&self, raw: &Value) -> Checked {
        let object = integral_floats_to_ints(raw.clone());
        let mut errors = Vec::new();
        typed_patch(&self.schema, &object, "", true, &mut errors);
        if !errors.is_empty() {
            return Checked { object, errors };
        }
        let mut object = default(&self.schema, object);
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
        errors.extend(check_name(&object));
        values(&self.schema, &object, "", &mut errors);
        if errors.iter().any(SchemaError::blocks_cel) {
            return Checked { object, errors };
        }
        if let Err(failures) = self.cel.validate(&self.schema, &object, None) {
            for f in failures.iter() {
                let value = if f.kind == ErrorKind::ValidationFailure {
                    lookup(&object, &f.field_path).and_then(scalar)
                } else {
                    None
                };
                errors.push(SchemaError::Rule {
                    path: f.field_path.clone(),
                    value,
                    message: f.message.clone(),
                });
            }
        }
        Checked { object, errors }
    }
}

thread_local! {
    // The CEL evaluator's function table is not `Sync`; one per thread, built on first use.
    static AUTH_POLICY_CHECKER: Checker = Checker::auth_policy();
}

/// [`Checker::check`] with the `AuthPolicy` schema.
pub fn check_auth_policy(raw: &Value) -> Checked {
    AUTH_POLICY_CHECKER.with(|c| c.check(raw))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn sorted(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries
}

fn schema_type(schema: &Value) -> &str {
    schema.get("type").and_then(Value::as_str).unwrap_or_default()
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// kubectl sends YAML as JSON, and its conversion writes `3.0` as `3`.
fn integral_floats_to_ints(v: Value) -> Value {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Whole and within i64 (±2^63): what the conversion turns into an integer.
            if f.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                Value::from(f as i64)
            } else {
                Value::Number(n)
            }
        }
        Value::Array(items) => Value::Array(items.into_iter().map(integral_floats_to_ints).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, integral_floats_to_ints(v))).collect()),
        other => other,
    }
}

/// ObjectMeta's fields: the server knows them without the CRD declaring `metadata`.
const OBJECT_META_FIELDS: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// Step 1, server-side apply's conversion to a typed object. A `null` always passes here.
fn typed_patch(schema: &Value, v: &Value, path: &str, root: bool, errors: &mut Vec<SchemaError>) {
    if v.is_null() || flag(schema, "x-kubernetes-int-or-string") {
        return;
    }
    let wrong = |expected, got| SchemaError::WrongType {
        path: path.to_string(),
        expected,
        got,
    };
    match schema_type(schema) {
        "object" => {
            let Some(map) = v.as_object() else {
                return errors.push(wrong("map", go_pointer(v)));
            };
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in sorted(map) {
                let child_path = join(path, k);
                if let Some(p) = props.and_then(|p| p.get(k)) {
                    typed_patch(p, child, &child_path, false, errors);
                } else if let Some(a) = additional {
                    typed_patch(a, child, &child_path, false, errors);
                } else if root && k == "metadata" {
                    for (mk, _) in child.as_object().map(sorted).unwrap_or_default() {
                        if !OBJECT_META_FIELDS.contains(&mk.as_str()) {
                            errors.push(SchemaError::UnknownField {
                                path: join(&child_path, mk),
                            });
                        }
                    }
                } else if !(flag(schema, "x-kubernetes-preserve-unknown-fields") || root && (k == "apiVersion" || k == "kind")) {
                    errors.push(SchemaError::UnknownField { path: child_path });
                }
            }
        }
        "array" => {
            let Some(items) = v.as_array() else {
                return errors.push(wrong("list", go_pointer(v)));
            };
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    typed_patch(item_schema, item, &format!("{path}[{i}]"), false, errors);
                }
            }
        }
        "string" if !v.is_string() => errors.push(wrong("string", format!("&value.valueUnstructured{{Value:{}}}", go_sharp_v(v)))),
        "integer" | "number" if !v.is_number() => errors.push(wrong("numeric (int or float)", go_type(v).to_string())),
        "boolean" if !v.is_boolean() => errors.push(wrong("boolean", go_pointer(v))),
        _ => {}
    }
}

/// Step 2, structural defaulting: what the server stores before it validates.
fn default(schema: &Value, v: Value) -> Value {
    match v {
        Value::Object(map) if schema_type(schema) == "object" => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let mut out = Map::new();
            for (k, child) in map {
                let Some(child_schema) = props.and_then(|p| p.get(&k)).or(additional) else {
                    out.insert(k, child);
                    continue;
                };
                if child.is_null() && !flag(child_schema, "x-kubernetes-int-or-string") {
                    if let Some(d) = child_schema.get("default") {
                        out.insert(k, default(child_schema, d.clone()));
                    } else if !flag(child_schema, "nullable") {
                        // Kept, for step 3 to refuse with the server's message.
                        out.insert(k, Value::Null);
                    }
                    // A nullable field set to null is the field left out.
                    continue;
                }
                out.insert(k, default(child_schema, child));
            }
            for (k, child_schema) in props.into_iter().flatten() {
                if !out.contains_key(k)
                    && let Some(d) = child_schema.get("default")
                {
                    out.insert(k.clone(), default(child_schema, d.clone()));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) => Value::Array(items.into_iter().map(|i| default(item_schema, i)).collect()),
            None => Value::Array(items),
        },
        other => other,
    }
}

static DNS1123_SUBDOMAIN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").expect("valid regex"));

/// A custom resource's name is a DNS-1123 subdomain.
fn check_name(object: &Value) -> Vec<SchemaError> {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        return vec![SchemaError::NameRequired];
    }
    let mut errors = Vec::new();
    if name.len() > 253 {
        errors.push(SchemaError::InvalidName {
            value: go_quote(name),
            message: "must be no more than 253 characters".into(),
        });
    }
    if !DNS1123_SUBDOMAIN.is_match(name) {
        errors.push(SchemaError::InvalidName {
            value: go_quote(name),
            message:
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end \
                      with an alphanumeric character (e.g. 'example.com', regex used for validation is \
                      '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                    .into(),
        });
    }
    errors
}

/// The JSON type as the server's schema validator names it.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(v: &Value) -> bool {
    v.as_number().is_some_and(|n| n.is_i64() || n.is_u64())
}

/// Step 3, the schema's value checks.
fn values(schema: &Value, v: &Value, path: &str, errors: &mut Vec<SchemaError>) {
    let invalid_type = |expected: &str, got: &str| SchemaError::InvalidType {
        path: path.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    };
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(v.is_string() || is_integer(v)) {
            errors.push(invalid_type("integer,string", json_type(v)));
        }
        return;
    }
    let ty = schema_type(schema);
    if v.is_null() {
        if !flag(schema, "nullable") && !ty.is_empty() {
            errors.push(invalid_type(ty, "null"));
        }
        return;
    }
    if ty == "integer" {
        let format = schema.get("format").and_then(Value::as_str);
        if !is_integer(v) {
            errors.push(invalid_type(format.unwrap_or("integer"), "float64"));
        }
        let fits = match format {
            Some("int32") => v.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            Some("int64") => v.as_i64().is_some(),
            _ => true,
        };
        if !fits && let Some(format) = format {
            errors.push(SchemaError::Format {
                path: path.to_string(),
                format: format.to_string(),
            });
        }
        if !is_integer(v) {
            return;
        }
    }
    let num = |key: &str| schema.get(key).and_then(Value::as_u64);
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        errors.push(SchemaError::Unsupported {
            path: path.to_string(),
            value: scalar(v).unwrap_or_else(|| go_sharp_v(v)),
            supported: allowed.iter().map(|a| scalar(a).unwrap_or_default()).collect::<Vec<_>>().join(", "),
        });
    }
    match v {
        Value::String(s) => {
            // Counted in characters, as the server does, whatever its message says.
            let chars = s.chars().count() as u64;
            if let Some(max) = num("maxLength")
                && chars > max
            {
                errors.push(SchemaError::TooLong {
                    path: path.to_string(),
                    max,
                });
            }
            if let Some(min) = num("minLength")
                && chars < min
            {
                errors.push(SchemaError::TooShort {
                    path: path.to_string(),
                    value: go_quote(s),
                    min,
                });
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            let shown = scalar(v).unwrap_or_default();
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let exclusive = flag(schema, "exclusiveMinimum");
                if x < min || exclusive && x == min {
                    errors.push(SchemaError::OutOfRange {
                        path: path.to_string(),
                        value: shown.clone(),
                        bound: format!("greater than {}{}", if exclusive { "" } else { "or equal to " }, go_float(min)),
                    });
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let exclusive = flag(schema, "exclusiveMaximum");
                if x > max || exclusive && x == max {
                    errors.push(SchemaError::OutOfRange {
                        path: path.to_string(),
                        value: shown,
                        bound: format!("less than {}{}", if exclusive { "" } else { "or equal to " }, go_float(max)),
                    });
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = num("maxItems")
                && items.len() as u64 > max
            {
                errors.push(SchemaError::TooMany {
                    path: path.to_string(),
                    count: items.len(),
                    max,
                });
            }
            if let Some(min) = num("minItems")
                && (items.len() as u64) < min
            {
                errors.push(SchemaError::TooFew {
                    path: path.to_string(),
                    count: items.len(),
                    min,
                });
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    values(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !map.contains_key(r)
                {
                    errors.push(SchemaError::Required { path: join(path, r) });
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in sorted(map) {
                if let Some(child_schema) = props.and_then(|p| p.get(k)).or(additional) {
                    values(child_schema, child, &join(path, k), errors);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// The value at a CEL error's field path (`spec.skipAuth.routes[0].methods`).
fn lookup<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut at = object;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (key, indices) = segment.split_once('[').map_or((segment, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            at = at.get(key)?;
        }
        for index in indices.split('[').filter(|s| !s.is_empty()) {
            at = at.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(at)
}

/// A scalar as the server's field errors print it (Go's `%v`, strings `%q`); objects and
/// lists are not shown.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(go_quote(s)),
        Value::Number(_) | Value::Bool(_) => Some(go_v(v)),
        Value::Null => Some("null".into()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x80 && c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() && (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\U{:08x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` of a float64: the shortest digits, with an exponent below 1e-4 or from 1e21.
fn go_float(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return format!("{f}");
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..21).contains(&exp) {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        format!("{f}")
    }
}

fn go_number(n: &serde_json::Number) -> String {
    if n.is_i64() || n.is_u64() {
        n.to_string()
    } else {
        go_float(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Go's `%v` of a value decoded from JSON into `interface{}`.
fn go_v(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => go_number(n),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!("[{}]", items.iter().map(go_v).collect::<Vec<_>>().join(" ")),
        Value::Object(map) => format!(
            "map[{}]",
            sorted(map)
                .into_iter()
                .map(|(k, v)| format!("{k}:{}", go_v(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    }
}

/// Go's `%#v` of the same.
fn go_sharp_v(v: &Value) -> String {
    match v {
        Value::Null => "interface {}(nil)".into(),
        Value::String(s) => go_quote(s),
        Value::Array(items) => format!(
            "[]interface {{}}{{{}}}",
            items.iter().map(go_sharp_v).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "map[string]interface {{}}{{{}}}",
            sorted(map)
                .into_iter()
                .map(|(k, v)| format!("{}:{}", go_quote(k), go_sharp_v(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => go_v(other),
    }
}

/// How server-side apply shows a value it cannot use as a map, list or boolean.
fn go_pointer(v: &Value) -> String {
    format!("&{{{}}}", go_v(v))
}

fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int64",
        Value::Number(_) => "float64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(spec: Value) -> Value {
        json!({"apiVersion": "sidekey.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "p", "namespace": "a"}, "spec": spec})
    }

    fn good() -> Value {
        json!({
            "targetRefs": [{"kind": "Service", "name": "s"}],
            "provider": {"type": "oidc", "issuerURL": "https://idp.example.com", "clientID": "c", "clientSecretRef": {"name": "s", "key": "k"}},
            "access": {"emailDomains": ["example.com"]},
        })
    }

    /// `good()` with the JSON pointer (under spec) set, or removed for `None`.
    fn with(pointer: &str, value: Option<Value>) -> Value {
        let mut spec = good();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let mut target = &mut spec;
        for segment in parent.split('/').filter(|s| !s.is_empty()) {
            if target.get(segment).is_none() {
                target[segment] = json!({});
            }
            target = target.get_mut(segment).unwrap();
        }
        match value {
            Some(v) => target[key] = v,
            None => {
                target.as_object_mut().unwrap().remove(key);
            }
        }
        policy(spec)
    }

    fn errors(object: &Value) -> Vec<String> {
        Checker::auth_policy()
            .check(object)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_good_policy_passes_and_is_defaulted() {
        let checked = Checker::auth_policy().check(&policy(good()));
        assert_eq!(checked.errors, []);
        assert_eq!(checked.object["spec"]["access"]["allowedGroups"], json!([]));
        assert_eq!(checked.object["spec"]["access"]["allowedEmails"], json!([]));
        assert_eq!(checked.object["spec"]["targetRefs"][0]["group"], "");
    }

    #[test]
    fn each_rejection_reads_as_the_api_server_writes_it() {
        let long = |n: usize| json!("x".repeat(n));
        let many = |n: usize| json!((0..n).map(|i| format!("g{i}")).collect::<Vec<_>>());
        let cases: Vec<(Value, &[&str])> = vec![
            (with("/foo", Some(json!(1))), &[".spec.foo: field not declared in schema"]),
            (
                with("/provider/foo", Some(json!(1))),
                &[".spec.provider.foo: field not declared in schema"],
            ),
            (
                with("/sidecar/port", Some(json!("80"))),
                &[".spec.sidecar.port: expected numeric (int or float), got string"],
            ),
            (
                with("/provider/clientID", Some(json!(5))),
                &[".spec.provider.clientID: expected string, got &value.valueUnstructured{Value:5}"],
            ),
            (
                with("/provider/clientID", Some(json!(["a", {"b": "q x", "a": 1.5}, true]))),
                &[
                    r#".spec.provider.clientID: expected string, got &value.valueUnstructured{Value:[]interface {}{"a", map[string]interface {}{"a":1.5, "b":"q x"}, true}}"#,
                ],
            ),
            (
                with("/provider/clientID", Some(json!(1e21))),
                &[".spec.provider.clientID: expected string, got &value.valueUnstructured{Value:1e+21}"],
            ),
            (
                with("/headers", Some(json!({"passAccessToken": ["a", {"b": "c", "a": 1}]}))),
                &[".spec.headers.passAccessToken: expected boolean, got &{[a map[a:1 b:c]]}"],
            ),
            (
                with("/access/emailDomains", Some(json!("example.com"))),
                &[".spec.access.emailDomains: expected list, got &{example.com}"],
            ),
            (with("/headers", Some(json!(5))), &[".spec.headers: expected map, got &{5}"]),
            (
                with("/targetRefs", Some(json!([{"kind": "Service", "name": "s", "foo": 1}]))),
                &[".spec.targetRefs[0].foo: field not declared in schema"],
            ),
            (
                with("/provider/type", Some(json!("azure"))),
                &[r#"spec.provider.type: Unsupported value: "azure": supported values: "entra-id", "oidc""#],
            ),
            (
                with("/redirectURL", Some(long(2049))),
                &["spec.redirectURL: Too long: may not be more than 2048 bytes"],
            ),
            (
                with("/provider/clientID", Some(json!(""))),
                &[r#"spec.provider.clientID: Invalid value: "": spec.provider.clientID in body should be at least 1 chars long"#],
            ),
            (
                with("/access/allowedGroups", Some(many(257))),
                &["spec.access.allowedGroups: Too many: 257: must have at most 256 items"],
            ),
            (
                with("/targetRefs", Some(json!([]))),
                &["spec.targetRefs: Invalid value: 0: spec.targetRefs in body should have at least 1 items"],
            ),
            (
                with("/targetRefs", Some(json!([{"kind": "Service"}]))),
                &["spec.targetRefs[0].name: Required value"],
            ),
            (with("/provider", None), &["spec.provider: Required value"]),
            (
                with("/access", Some(Value::Null)),
                &[r#"spec.access: Invalid value: "null": spec.access in body must be of type object: "null""#],
            ),
            (
                with("/sidecar/resources", Some(json!({"limits": {"cpu": true}}))),
                &[
                    r#"spec.sidecar.resources.limits.cpu: Invalid value: "boolean": spec.sidecar.resources.limits.cpu in body must be of type integer,string: "boolean""#,
                ],
            ),
            (
                with("/sidecar/port", Some(json!(1.5))),
                &[
                    r#"spec.sidecar.port: Invalid value: "float64": spec.sidecar.port in body must be of type int32: "float64""#,
                    r#"<nil>: Invalid value: "": Checked value must be of type integer with format int32 in spec.sidecar.port"#,
                ],
            ),
            (
                with("/sidecar/port", Some(json!(99_999_999_999_i64))),
                &[
                    r#"<nil>: Invalid value: "": Checked value must be of type integer with format int32 in spec.sidecar.port"#,
                    "spec.sidecar.port: Invalid value: 99999999999: sidecar.port must be between 1024 and 65535 (the sidecar runs as non-root)",
                ],
            ),
            (
                with("/access", Some(json!({}))),
                &[
                    "spec.access: Invalid value: access needs at least one rule (emailDomains, allowedEmails or allowedGroups): with none, no one could sign in",
                ],
            ),
            (
                with("/redirectURL", Some(json!("javascript:alert(1)"))),
                &[r#"spec.redirectURL: Invalid value: "javascript:alert(1)": redirectURL must be an https:// (or http://) URL"#],
            ),
            (
                with("/skipAuth", Some(json!({"routes": [{"path": "/x", "methods": ["get"]}]}))),
                &["spec.skipAuth.routes[0].methods: Invalid value: skipAuth methods are upper-case HTTP methods such as GET"],
            ),
            (
                with("/sidecar/port", Some(json!(80))),
                &["spec.sidecar.port: Invalid value: 80: sidecar.port must be between 1024 and 65535 (the sidecar runs as non-root)"],
            ),
            (
                with("/session/store", Some(json!({"type": "redis", "redis": null}))),
                &["spec.session.store: Invalid value: session.store.type redis needs session.store.redis.urlSecretRef"],
            ),
        ];
        for (object, want) in cases {
            assert_eq!(errors(&object), want.to_vec(), "{object:#}");
        }
    }

    #[test]
    fn structural_errors_stop_before_cel_and_several_are_all_reported() {
        // Unknown fields and wrong types alone, as server-side apply answers; the server picks
        // one unknown field per object at random, this lists them all.
        let mut spec = good();
        spec["foo"] = json!(1);
        spec["bar"] = json!(2);
        spec["access"] = json!({});
        spec["sidecar"] = json!({"port": "x"});
        assert_eq!(
            errors(&policy(spec)),
            [
                ".spec.bar: field not declared in schema",
                ".spec.foo: field not declared in schema",
                ".spec.sidecar.port: expected numeric (int or float), got string",
            ]
        );
        // Value errors, in path order, and no CEL finding (access is empty too).
        let mut spec = good();
        spec["provider"]["clientID"] = json!("x".repeat(257));
        spec["provider"]["type"] = json!("azure");
        spec["targetRefs"] = json!([{"kind": "Service"}]);
        spec["access"] = json!({});
        assert_eq!(
            errors(&policy(spec)),
            [
                "spec.provider.clientID: Too long: may not be more than 256 bytes",
                r#"spec.provider.type: Unsupported value: "azure": supported values: "entra-id", "oidc""#,
                "spec.targetRefs[0].name: Required value",
            ]
        );
    }

    #[test]
    fn minimums_and_formats_do_not_stop_the_cel_rules() {
        let mut spec = good();
        spec["provider"]["clientID"] = json!("");
        spec["sidecar"] = json!({"port": 99_999_999_999_i64, "extraArgs": ["x"]});
        assert_eq!(
            errors(&policy(spec)),
            [
                r#"spec.provider.clientID: Invalid value: "": spec.provider.clientID in body should be at least 1 chars long"#,
                r#"spec.sidecar.extraArgs[0]: Invalid value: "x": spec.sidecar.extraArgs[0] in body should be at least 3 chars long"#,
                r#"<nil>: Invalid value: "": Checked value must be of type integer with format int32 in spec.sidecar.port"#,
                "spec.sidecar.extraArgs: Invalid value: sidecar.extraArgs entries must be flags such as --cookie-samesite=strict",
                "spec.sidecar.port: Invalid value: 99999999999: sidecar.port must be between 1024 and 65535 (the sidecar runs as non-root)",
            ]
        );
        // Status is dropped on create: only its shape is checked, by server-side apply.
        let mut p = policy(good());
        p["status"] = json!({"conditions": [{"type": "x"}]});
        assert_eq!(errors(&p), Vec::<String>::new());
        p["status"] = json!({"foo": 1});
        assert_eq!(errors(&p), [".status.foo: field not declared in schema"]);
    }

    #[test]
    fn nulls_defaults_and_numbers_are_handled_as_the_server_does() {
        let checker = Checker::auth_policy();
        // A nullable field set to null is dropped, so a rule sees it as absent.
        let mut spec = good();
        spec["provider"]["workloadIdentity"] = Value::Null;
        spec["redirectURL"] = Value::Null;
        spec["sidecar"] = Value::Null;
        let checked = checker.check(&policy(spec));
        assert_eq!(checked.errors, []);
        assert!(checked.object["spec"]["provider"].get("workloadIdentity").is_none());
        // A defaulted field set to null gets its default.
        let mut spec = good();
        spec["access"] = json!({"emailDomains": null, "allowedGroups": ["g"]});
        let checked = checker.check(&policy(spec));
        assert_eq!(checked.errors, []);
        assert_eq!(checked.object["spec"]["access"]["emailDomains"], json!([]));
        // 4180.0 is the integer kubectl would send.
        let mut spec = good();
        spec["sidecar"] = json!({"port": 4180.0});
        let checked = checker.check(&policy(spec));
        assert_eq!(checked.errors, []);
        assert!(checked.object["spec"]["sidecar"]["port"].is_i64());
        // Lengths count characters: 200 two-byte characters fit in 256.
        let mut spec = good();
        spec["provider"]["clientID"] = json!("é".repeat(200));
        assert_eq!(checker.check(&policy(spec)).errors, []);
        // Quantities are not parsed by the schema.
        let mut spec = good();
        spec["sidecar"] = json!({"resources": {"limits": {"cpu": "lots", "memory": 5}}});
        assert_eq!(checker.check(&policy(spec)).errors, []);
    }

    #[test]
    fn metadata_is_checked_like_any_custom_resource() {
        let mut p = policy(good());
        p["metadata"]["name"] = json!("P_x");
        p["spec"]["access"] = json!({});
        let got = errors(&p);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with(r#"metadata.name: Invalid value: "P_x": a lowercase RFC 1123 subdomain"#),
            "{got:?}"
        );
        assert!(got[1].starts_with("spec.access: Invalid value: access needs"), "{got:?}");
        let mut p = policy(good());
        p["metadata"]["foo"] = json!(1);
        assert_eq!(errors(&p), [".metadata.foo: field not declared in schema"]);
        p["metadata"] = json!({"labels": {"a": "b"}});
        assert_eq!(errors(&p), ["metadata.name: Required value: name or generateName is required"]);
        let mut p = policy(good());
        p["foo"] = json!(1);
        assert_eq!(errors(&p), [".foo: field not declared in schema"]);
    }

    #[test]
    fn bounds_and_preserved_fields_on_a_small_schema() {
        let schema = json!({"type": "object", "properties": {
            "n": {"type": "integer", "minimum": 10, "maximum": 20},
            "x": {"type": "integer", "minimum": 10, "exclusiveMinimum": true},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            "ios": {"x-kubernetes-int-or-string": true},
        }});
        let checker = Checker::new(schema);
        let e = |v: Value| checker.check(&v).errors.iter().map(ToString::to_string).collect::<Vec<_>>();
        let name = json!({"name": "o"});
        assert_eq!(
            e(json!({"metadata": name, "n": 5})),
            ["n: Invalid value: 5: n in body should be greater than or equal to 10"]
        );
        assert_eq!(
            e(json!({"metadata": name, "n": 21})),
            ["n: Invalid value: 21: n in body should be less than or equal to 20"]
        );
        assert_eq!(
            e(json!({"metadata": name, "x": 10})),
            ["x: Invalid value: 10: x in body should be greater than 10"]
        );
        assert_eq!(
            e(json!({"metadata": name, "free": {"any": {"thing": 1}}, "ios": "5%"})),
            Vec::<String>::new()
        );
        assert_eq!(e(json!({"metadata": name, "ios": 5})), Vec::<String>::new());
    }

    #[test]
    fn go_formatting_matches_the_server() {
        assert_eq!(go_quote("a\"b\\c\nd é"), r#""a\"b\\c\nd é""#);
        assert_eq!(go_float(1.5), "1.5");
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(1e20), "100000000000000000000");
        assert_eq!(go_float(0.00001), "1e-05");
        assert_eq!(go_float(0.0001), "0.0001");
        assert_eq!(lookup(&json!({"a": {"b": [1, {"c": 2}]}}), "a.b[1].c"), Some(&json!(2)));
    }

    /// The walker knows these keywords and no others; a CRD change that needs another (say
    /// `pattern` or `oneOf`) must teach the walker first, or the offline verdict would be
    /// laxer than the server's.
    #[test]
    fn the_crd_uses_only_keywords_the_walker_implements() {
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "additionalProperties",
            "items",
            "required",
            "enum",
            "default",
            "nullable",
            "format",
            "maxLength",
            "minLength",
            "maxItems",
            "minItems",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "x-kubernetes-int-or-string",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-validations",
            "description",
            "title",
        ];
        fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
            let Some(map) = node.as_object() else { return };
            for k in map.keys() {
                if !KNOWN.contains(&k.as_str()) {
                    out.push(format!("{path}: {k}"));
                }
            }
            if let Some(props) = map.get("properties").and_then(Value::as_object) {
                for (k, v) in props {
                    walk(v, &join(path, k), out);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(v) = map.get(key) {
                    walk(v, &format!("{path}.<{key}>"), out);
                }
            }
        }
        let mut unknown = Vec::new();
        walk(&AUTH_POLICY_SCHEMA, "", &mut unknown);
        assert!(unknown.is_empty(), "schema keywords the walker does not check: {unknown:?}");
        let formats: Vec<&str> = ["int32", "int64", "date-time"].to_vec();
        let mut seen = Vec::new();
        fn formats_in(node: &Value, out: &mut Vec<String>) {
            match node {
                Value::Object(m) => {
                    if let Some(f) = m.get("format").and_then(Value::as_str) {
                        out.push(f.to_string());
                    }
                    m.values().for_each(|v| formats_in(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| formats_in(v, out)),
                _ => {}
            }
        }
        formats_in(&AUTH_POLICY_SCHEMA, &mut seen);
        // date-time is only in status, which users do not write; the server checks it there.
        assert!(seen.iter().all(|f| formats.contains(&f.as_str())), "{seen:?}");
    }
}

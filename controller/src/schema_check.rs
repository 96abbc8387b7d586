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

mod go_text;
use go_text::{go_float, go_pointer, go_quote, go_sharp_v, go_type, scalar};

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

#[cfg(test)]
mod tests;

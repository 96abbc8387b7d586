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

//! The CRD as committed, its CEL rules (evaluated client-side by kube's CEL validator, the
//! rules the API server runs), and the rendered proxy command lines parsed by the proxy itself.

use std::path::Path;

use serde_json::{Value, json};
use sidekey_controller::api::AuthPolicy;
use sidekey_controller::offline::{self, Input};
use sidekey_controller::render::{RenderOptions, SidecarMode};

#[test]
fn committed_crd_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/sidekey.dev_authpolicies.yaml");
    let want = sidekey_controller::crd_yaml();
    if std::env::var_os("SIDEKEY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&path).unwrap_or_default(),
        want,
        "crds/ is stale: run `make crds`"
    );
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "sidekey.dev/v1alpha1", "kind": "AuthPolicy", "metadata": {"name": "p", "namespace": "a"}, "spec": spec})
}

fn good_spec() -> Value {
    json!({
        "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "r"}],
        "provider": {"type": "entra-id", "issuerURL": "https://login.microsoftonline.com/t/v2.0", "clientID": "c", "workloadIdentity": {}},
        "access": {"allowedGroups": ["g"], "emailDomains": [], "allowedEmails": []},
    })
}

/// The CEL errors the API server would answer with, or empty when accepted.
fn cel_errors(spec: Value) -> String {
    let obj: AuthPolicy = serde_json::from_value(policy(spec)).expect("deserializes");
    match kube::core::cel::validate_cel(&obj) {
        Ok(()) => String::new(),
        Err(e) => format!("{e:?}"),
    }
}

fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut spec
    } else {
        spec.pointer_mut(parent).unwrap()
    };
    if value.is_null() {
        target.as_object_mut().unwrap().remove(key);
    } else {
        target[key] = value;
    }
    spec
}

#[test]
fn cel_rules_accept_a_good_policy_and_explain_each_rejection() {
    assert_eq!(cel_errors(good_spec()), "");
    let cases = [
        (
            with(good_spec(), "/provider/clientSecretRef", json!({"name": "s", "key": "k"})),
            "exactly one of provider.workloadIdentity",
        ),
        (
            with(good_spec(), "/provider/workloadIdentity", Value::Null),
            "exactly one of provider.workloadIdentity",
        ),
        (
            with(good_spec(), "/provider/issuerURL", json!("http://login.example.com/t")),
            "issuerURL must be an https:// URL",
        ),
        (
            with(good_spec(), "/provider/issuerURL", json!("not a url")),
            "issuerURL must be an https:// URL",
        ),
        (
            with(good_spec(), "/provider/workloadIdentity", json!({"expirationSeconds": 300})),
            "between 600",
        ),
        (
            with(
                good_spec(),
                "/access",
                json!({"emailDomains": [], "allowedEmails": [], "allowedGroups": []}),
            ),
            "at least one rule",
        ),
        (
            with(good_spec(), "/session", json!({"expire": "7 days"})),
            "session.expire must be a duration",
        ),
        (
            with(good_spec(), "/session", json!({"refresh": "1d"})),
            "session.refresh must be a duration",
        ),
        (
            with(good_spec(), "/session", json!({"store": {"type": "redis"}})),
            "needs session.store.redis.urlSecretRef",
        ),
        (
            with(
                good_spec(),
                "/targetRefs",
                json!([{"group": "apps", "kind": "Deployment", "name": "x"}]),
            ),
            "targetRefs[] must be",
        ),
        (
            with(good_spec(), "/redirectURL", json!("javascript:alert(1)")),
            "redirectURL must be",
        ),
        (with(good_spec(), "/sidecar", json!({"port": 80})), "between 1024 and 65535"),
        (
            with(good_spec(), "/sidecar", json!({"extraArgs": ["oops"]})),
            "extraArgs entries must be flags",
        ),
        (
            with(good_spec(), "/skipAuth", json!({"routes": [{"path": "^/x", "methods": ["get"]}]})),
            "upper-case HTTP methods",
        ),
    ];
    for (spec, want) in cases {
        let got = cel_errors(spec.clone());
        assert!(got.contains(want), "spec {spec}\nwanted an error containing {want:?}, got {got:?}");
    }
    // http is fine for a loopback issuer (tests, demos), and durations in Go syntax parse.
    let local = with(good_spec(), "/provider/issuerURL", json!("http://127.0.0.1:9000/"));
    let local = with(
        with(local, "/provider/type", json!("oidc")),
        "/provider/workloadIdentity",
        Value::Null,
    );
    let local = with(local, "/provider/clientSecretRef", json!({"name": "s", "key": "k"}));
    assert_eq!(
        cel_errors(with(local, "/session", json!({"expire": "1h30m", "refresh": "90s"}))),
        ""
    );
    let wi_on_oidc = with(good_spec(), "/provider/type", json!("oidc"));
    assert!(cel_errors(wi_on_oidc).contains("needs provider.type: entra-id"));
}

#[test]
fn crd_schema_has_printer_columns_short_name_and_policy_label() {
    let crd = sidekey_controller::crd_yaml();
    for want in [
        "gateway.networking.k8s.io/policy: Inherited",
        "- ap",
        "- sidekey",
        "name: Ready",
        "name: Targets",
        "name: Protected",
        "subresources:",
        "maxItems: 16",
        "minItems: 1",
    ] {
        assert!(crd.contains(want), "CRD lacks {want:?}");
    }
}

/// (what, argv, environment) of each rendered sidecar.
type Invocation = (String, Vec<String>, Vec<(String, String)>);

fn sidecar_args_and_env(case: &str) -> Vec<Invocation> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(case);
    let input = Input::read(&[dir.join("input.yaml")]).unwrap();
    let opts = RenderOptions {
        proxy_image: "img".into(),
        mode: SidecarMode::Native,
        service_account_issuer: None,
    };
    let mut out = Vec::new();
    // The preview, not `render`: the conflict case is refused by `render`, yet the winning
    // policy's sidecar must still be a valid proxy command line.
    for r in offline::preview(&input, &opts) {
        for o in r.objects.iter().filter(|o| o["kind"] == "Deployment") {
            let c = o["spec"]["template"]["spec"]["initContainers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "sidekey-proxy")
                .unwrap();
            let mut args = vec!["sidekey-proxy".to_string()];
            args.extend(c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()));
            // What the kubelet would put in the environment from the Secrets.
            let env = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let name = e["name"].as_str().unwrap().to_string();
                    let value = match e["value"].as_str() {
                        Some(v) => v.to_string(),
                        None if name == "OAUTH2_PROXY_REDIS_CONNECTION_URL" => "redis://127.0.0.1:6379".into(),
                        None => "0123456789abcdef0123456789abcdef".into(),
                    };
                    (name, value)
                })
                .collect();
            out.push((format!("{case}: {}", o["metadata"]["name"]), args, env));
        }
    }
    out
}

#[test]
fn rendered_args_parse_with_the_proxys_own_parser() {
    let cases = ["entra-route", "multi", "conflict", "cross-namespace", "oidc-secret"];
    let mut n = 0;
    for case in cases {
        for (what, args, env) in sidecar_args_and_env(case) {
            sidekey_proxy::config::load::parse(args.clone(), env.clone()).unwrap_or_else(|e| panic!("{what}: {e}\nargs: {args:?}"));
            n += 1;
        }
    }
    assert_eq!(n, 8);
}

#[test]
fn rendered_oidc_config_is_a_complete_valid_proxy_config() {
    // Every rendered sidecar (generic OIDC, Entra workload identity, Redis sessions) must
    // pass the proxy's full start-up checks.
    for case in ["conflict", "cross-namespace", "entra-route", "multi", "regular-mode", "oidc-secret"] {
        for (what, args, env) in sidecar_args_and_env(case) {
            let inv = sidekey_proxy::config::load(args.clone(), env).unwrap_or_else(|e| panic!("{what}: {e}\nargs: {args:?}"));
            sidekey_proxy::config::Config::from_values(&inv.values).unwrap_or_else(|e| panic!("{what}: {e}\nargs: {args:?}"));
        }
    }
}

/// docs/authpolicy.md is the field reference: every field of the schema has a row.
#[test]
fn every_spec_field_is_documented() {
    use kube::CustomResourceExt;
    fn walk(node: &Value, path: &str, out: &mut Vec<String>) {
        if node["type"] == "array" {
            return walk(&node["items"], &format!("{path}[]"), out);
        }
        if let Some(props) = node["properties"].as_object() {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                // Plain groupings (`spec.session`) are the page's sections, not rows.
                if v.get("properties").is_none() {
                    out.push(p.clone());
                }
                // ResourceRequirements is Kubernetes' own type.
                if k != "resources" {
                    walk(v, &p, out);
                }
            }
        }
    }
    let crd = serde_json::to_value(AuthPolicy::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut fields = Vec::new();
    walk(spec, "spec", &mut fields);
    assert!(fields.len() >= 45, "{fields:?}");
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/authpolicy.md")).unwrap();
    let missing: Vec<&String> = fields.iter().filter(|f| !doc.contains(&format!("| `{f}` |"))).collect();
    assert!(missing.is_empty(), "fields without a row in docs/authpolicy.md: {missing:?}");
}

/// docs/authpolicy.md's "Limits" table gives every bound the schema sets on a string or a
/// list, with its number, so users see what the API server will refuse.
#[test]
fn every_bound_is_documented_in_the_limits_table() {
    use kube::CustomResourceExt;
    fn walk(node: &Value, name: &str, out: &mut Vec<(String, u64)>) {
        for key in ["maxLength", "maxItems"] {
            if let Some(n) = node[key].as_u64() {
                out.push((name.to_string(), n));
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, name, out);
        }
        for (k, v) in node["properties"].as_object().into_iter().flatten() {
            // ResourceRequirements is Kubernetes' own type, with Kubernetes' own bounds.
            if k != "resources" {
                walk(v, k, out);
            }
        }
    }
    let crd = serde_json::to_value(AuthPolicy::crd()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut bounds = Vec::new();
    walk(spec, "spec", &mut bounds);
    assert!(bounds.len() >= 40, "{bounds:?}");
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/authpolicy.md")).unwrap();
    let table = doc
        .split("## Limits")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Limits section");
    let missing: Vec<_> = bounds
        .iter()
        .filter(|(field, n)| {
            !table
                .lines()
                .any(|row| row.contains(&format!("{field}`")) && row.contains(&n.to_string()))
        })
        .collect();
    assert!(missing.is_empty(), "bounds without their number in the Limits table: {missing:?}");
}

//! Golden tests for the pure core, through the same path as `sidekey-controller render`.
//! `SIDEKEY_UPDATE_GOLDEN=1 cargo test -p sidekey-controller --test render` rewrites them.

use std::path::{Path, PathBuf};

use sidekey_controller::offline::{self, Input};
use sidekey_controller::render::{RenderOptions, SidecarMode};

pub fn opts(mode: SidecarMode) -> RenderOptions {
    RenderOptions {
        proxy_image: "ghcr.io/sidekey-dev/sidekey-proxy:v0.1.0".into(),
        mode,
        service_account_issuer: None,
    }
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    cases
}

/// Each case's preview (`output.yaml`, what the controller would do for every policy) and,
/// when `render` refuses the input, the reasons (`refused.txt`, as render prints them).
#[test]
fn golden_outputs_are_current() {
    let update = std::env::var_os("SIDEKEY_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for case in cases() {
        let mode = match std::fs::read_to_string(case.join("mode")).unwrap_or_default().trim() {
            "regular" => SidecarMode::Regular,
            _ => SidecarMode::Native,
        };
        let input = Input::read(&[case.join("input.yaml")]).unwrap();
        let yaml = offline::to_yaml(&offline::preview(&input, &opts(mode)));
        let refused = match offline::render(&input, &opts(mode)) {
            Ok(rendered) => {
                assert_eq!(
                    offline::to_yaml(&rendered),
                    yaml,
                    "{}: render differs from its preview",
                    case.display()
                );
                None
            }
            Err(e) => Some(format!("{e}\n")),
        };
        for (golden, want) in [(case.join("output.yaml"), Some(yaml)), (case.join("refused.txt"), refused)] {
            let have = std::fs::read_to_string(&golden).ok();
            if update {
                match &want {
                    Some(text) => std::fs::write(&golden, text).unwrap(),
                    None => {
                        let _ = std::fs::remove_file(&golden);
                    }
                }
            } else if have != want {
                stale.push(format!(
                    "{}\n--- got:\n{}",
                    golden.display(),
                    want.unwrap_or_else(|| "(no file)".into())
                ));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "golden files differ (SIDEKEY_UPDATE_GOLDEN=1 to accept):\n{}",
        stale.join("\n")
    );
}

fn render_case(name: &str) -> Vec<offline::Rendered> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    let input = Input::read(&[dir.join("input.yaml")]).unwrap();
    offline::preview(&input, &opts(SidecarMode::Native))
}

fn render_text(yaml: &str) -> Result<Vec<offline::Rendered>, String> {
    let mut input = Input::read(&[]).unwrap();
    input.add_text("test.yaml", yaml).map_err(|e| e.to_string())?;
    offline::render(&input, &opts(SidecarMode::Native)).map_err(|e| e.to_string())
}

fn targets(r: &offline::Rendered) -> Vec<String> {
    r.plan
        .status
        .as_ref()
        .unwrap()
        .targets
        .iter()
        .map(|t| {
            format!(
                "{}:{}:{:?}",
                t.service.clone().unwrap_or_default(),
                t.deployment.clone().unwrap_or_default(),
                t.state
            )
        })
        .collect()
}

#[test]
fn multi_protects_every_deployment_behind_the_routes_and_leaves_others_alone() {
    let r = render_case("multi");
    let names: Vec<String> = r[0].plan.deployment_applies.iter().map(|a| a.key.to_string()).collect();
    assert_eq!(names, ["shop/admin", "shop/api-blue", "shop/api-green", "shop/web"]);
    let web = &r[0]
        .objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "web")
        .unwrap()["spec"]["template"]["spec"];
    let inits: Vec<&str> = web["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        inits,
        ["migrate", "sidekey-proxy"],
        "existing init containers kept, sidecar appended"
    );
    let vols: Vec<&str> = web["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        vols,
        ["azure-identity-token", "sidekey-token"],
        "the Azure webhook's volume is not ours and stays"
    );
    let args = web["initContainers"][1]["args"].as_array().unwrap();
    assert!(
        args.iter().any(|a| a == "--upstream=http://127.0.0.1:8080/"),
        "named port http resolved to 8080"
    );
    let services: Vec<String> = r[0].plan.service_applies.iter().map(|a| a.key.to_string()).collect();
    assert_eq!(services, ["shop/admin", "shop/api", "shop/web"]);
    let web_svc = r[0]
        .objects
        .iter()
        .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "web")
        .unwrap();
    assert_eq!(
        web_svc["spec"]["ports"][1]["targetPort"], 9100,
        "the unrouted metrics port is not retargeted"
    );
    assert!(r[0].objects.iter().all(|o| o["metadata"]["name"] != "worker"));
    let wi = r[0].plan.status.as_ref().unwrap().workload_identity.clone().unwrap();
    assert_eq!(
        wi.subjects,
        [
            "system:serviceaccount:shop:api",
            "system:serviceaccount:shop:default",
            "system:serviceaccount:shop:web"
        ]
    );
}

#[test]
fn conflict_oldest_policy_wins() {
    let r = render_case("conflict");
    let newer = r.iter().find(|r| r.policy.name == "newer").unwrap();
    let older = r.iter().find(|r| r.policy.name == "older").unwrap();
    assert_eq!(older.plan.deployment_applies.len(), 1);
    assert!(newer.plan.deployment_applies.is_empty() && newer.plan.service_applies.is_empty());
    let st = newer.plan.status.as_ref().unwrap();
    let accepted = st.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
    assert_eq!((accepted.status.as_str(), accepted.reason.as_str()), ("False", "Conflicted"));
    assert!(accepted.message.contains("apps/older"), "{}", accepted.message);
}

/// A policy that would not be Accepted is refused by `render`: applying the files would not
/// do what a successful preview claims.
#[test]
fn render_refuses_a_conflicted_policy_naming_the_winner() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/conflict");
    let input = Input::read(&[dir.join("input.yaml")]).unwrap();
    let err = offline::render(&input, &opts(SidecarMode::Native)).err().unwrap().to_string();
    assert_eq!(
        err,
        "authpolicy/apps/newer: would not be Accepted (Conflicted): Deployment apps/hello is already protected by \
         AuthPolicy apps/older (the oldest policy wins)"
    );
}

#[test]
fn cross_namespace_needs_a_reference_grant() {
    let r = render_case("cross-namespace");
    assert_eq!(targets(&r[0]), ["backend/portal:portal:Protected", "other/legacy::RefNotPermitted"]);
    let ready = r[0]
        .plan
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "TargetsNotReady"));
}

#[test]
fn render_errors_name_the_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {ports: 5}\n",
    )
    .unwrap();
    let err = Input::read(std::slice::from_ref(&file)).err().unwrap().to_string();
    assert!(err.contains("bad.yaml: document 2 (Service a/s): spec.ports"), "{err}");

    std::fs::write(&file, "kind: [unclosed\n").unwrap();
    let err = Input::read(std::slice::from_ref(&file)).err().unwrap().to_string();
    assert!(err.contains("bad.yaml: not valid YAML"), "{err}");
}

const SERVICE_AND_DEPLOYMENT: &str = "
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: a}
spec: {selector: {app: s}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: s, namespace: a}
spec:
  selector: {matchLabels: {app: s}}
  template:
    metadata: {labels: {app: s}}
    spec: {containers: [{name: s, image: s, ports: [{containerPort: 8080}]}]}
";

fn policy_yaml(spec_extra: &str) -> String {
    format!(
        "apiVersion: sidekey.dev/v1alpha1\nkind: AuthPolicy\nmetadata: {{name: p, namespace: a}}\nspec:\n  \
         targetRefs: [{{kind: Service, name: s}}]\n  redirectURL: https://s.example.com/oauth2/callback\n  \
         provider: {{type: oidc, issuerURL: https://idp.example.com, clientID: c, clientSecretRef: {{name: s, key: k}}}}\n{spec_extra}"
    )
}

/// `render` gives the API server's verdict first, then the controller's, in their words.
#[test]
fn render_refuses_what_the_api_server_or_the_controller_would() {
    let ok = render_text(&format!(
        "{}  access: {{emailDomains: [example.com]}}\n{SERVICE_AND_DEPLOYMENT}",
        policy_yaml("")
    ));
    assert!(ok.is_ok(), "{:?}", ok.err());
    let cases = [
        // Once rendered as --email-domain=*: an empty access block now fails like on the server.
        (
            "  access: {}\n",
            "authpolicy/a/p: spec.access: Invalid value: access needs at least one rule (emailDomains, allowedEmails or allowedGroups): \
             with none, no one could sign in",
        ),
        (
            "  access: {emailDomains: [x]}\n  foo: 1\n",
            "authpolicy/a/p: .spec.foo: field not declared in schema",
        ),
        (
            "  access: {emailDomains: [x]}\n  skipAuth: {routes: [{path: \"^/(unclosed\"}]}\n",
            "authpolicy/a/p: skipAuth.routes[0].path: \"^/(unclosed\" is not a valid regular expression",
        ),
        (
            "  access: {emailDomains: [x]}\n  sidecar: {extraArgs: [--cookie-samsite=strict]}\n",
            "authpolicy/a/p: sidecar.extraArgs[0]: --cookie-samsite is not a sidekey-proxy flag; did you mean --cookie-samesite?",
        ),
    ];
    for (extra, want) in cases {
        let err = render_text(&format!("{}{extra}{SERVICE_AND_DEPLOYMENT}", policy_yaml("")))
            .err()
            .unwrap();
        assert!(err.starts_with(want), "{extra}\n{err}");
    }
}

/// A policy whose targets are not all in the input would preview less than it does.
#[test]
fn render_refuses_targets_missing_from_the_input() {
    let lone = format!("{}  access: {{emailDomains: [example.com]}}\n", policy_yaml(""));
    assert_eq!(
        render_text(&lone).err().unwrap(),
        "authpolicy/a/p: would not be Accepted (TargetNotFound): Service a/s not found"
    );
    // One of two targets present: Accepted, and still refused.
    let two = lone.replace(
        "targetRefs: [{kind: Service, name: s}]",
        "targetRefs: [{kind: Service, name: s}, {kind: Service, name: gone}]",
    );
    assert_eq!(
        render_text(&format!("{two}{SERVICE_AND_DEPLOYMENT}")).err().unwrap(),
        "authpolicy/a/p: target not in the input: Service a/gone not found"
    );
}

#[test]
fn regular_mode_puts_the_proxy_among_the_containers_and_warns() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/regular-mode");
    let input = Input::read(&[dir.join("input.yaml")]).unwrap();
    let r = offline::render(&input, &opts(SidecarMode::Regular)).unwrap();
    let spec = &r[0].plan.deployment_applies[0].body["spec"]["template"]["spec"];
    assert!(spec.get("initContainers").is_none());
    assert_eq!(spec["containers"][0]["name"], "sidekey-proxy");
    assert!(spec["containers"][0].get("restartPolicy").is_none());
    assert!(r[0].plan.events.iter().any(|e| e.warning && e.reason == "RegularSidecar"));
}

/// `manifests/examples/*.yaml` through the real `sidekey-controller render` command: each
/// must render cleanly (every target Protected), pass the CRD's CEL rules, and match its
/// committed output in `manifests/examples/rendered/`.
#[test]
fn examples_render_to_their_committed_outputs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let update = std::env::var_os("SIDEKEY_UPDATE_GOLDEN").is_some();
    let mut examples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 4, "the seed scenarios: {examples:?}");
    let mut stale = Vec::new();
    for example in &examples {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey-controller"))
            .args(["render", "-f"])
            .arg(example)
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Ready=True") && !stdout.contains("Accepted=False"),
            "{}: every example must be fully protected:\n{stdout}",
            example.display()
        );
        for policy in Input::read(std::slice::from_ref(example)).unwrap().snapshot.policies.values() {
            assert_eq!(
                kube::core::cel::validate_cel(policy.as_ref()).map_err(|e| format!("{e:?}")),
                Ok(()),
                "{}",
                example.display()
            );
        }
        let golden = dir.join("rendered").join(example.file_name().unwrap());
        if update {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &stdout).unwrap();
        } else if std::fs::read_to_string(&golden).unwrap_or_default() != stdout {
            stale.push(golden.display().to_string());
        }
    }
    assert!(stale.is_empty(), "stale example renders (run `make crds`): {stale:?}");
}

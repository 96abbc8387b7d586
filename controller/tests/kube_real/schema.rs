//! What the API server itself accepts: the generated CRD, `manifests/install`, the chart's
//! `helm template` output, every example, and the corpus of bad policies with the message
//! each must be refused with. The same corpus runs through `sidekey-controller render`
//! (controller/tests/render.rs) so the offline verdict is the server's.

use std::path::Path;

use crate::support::{self, REPO, TestNamespace, kubectl, kubectl_ok};

#[tokio::test(flavor = "multi_thread")]
async fn crd_install_manifests_and_helm_output_apply_server_side() {
    let rig = crate::rig_or_skip!();
    let _shared = support::CLUSTER_LOCK.read().await;
    support::crds_installed(rig).await;

    // The CRD the server stores is ours: structural, with every CEL rule compiled and costed.
    let crd = support::get_json(rig, "default", "crd/authpolicies.sidekey.dev").expect("CRD stored");
    let established = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "CRD not established: {:#}", crd["status"]);
    assert_eq!(crd["metadata"]["labels"]["gateway.networking.k8s.io/policy"], "Inherited");

    // The kustomize install exactly as the README says. There is no node, so the controller
    // Deployment it creates never starts a pod; it is deleted after.
    kubectl_ok(rig, &["apply", "--server-side", "-k", &format!("{REPO}/manifests/install")], None);
    let installed = kubectl_ok(
        rig,
        &[
            "-n",
            "sidekey-system",
            "get",
            "deployment,serviceaccount,role,rolebinding",
            "-o",
            "name",
        ],
        None,
    );
    for want in [
        "deployment.apps/sidekey-controller",
        "serviceaccount/sidekey",
        "role.rbac.authorization.k8s.io/sidekey-leader-election",
    ] {
        assert!(installed.contains(want), "{want} not installed:\n{installed}");
    }
    kubectl_ok(rig, &["-n", "sidekey-system", "delete", "deployment/sidekey-controller"], None);
    // Every chart configuration the chart tests render, through the real helm.
    for values in std::fs::read_dir(Path::new(REPO).join("charts/sidekey/ci")).unwrap() {
        let values = values.unwrap().path();
        let out = std::process::Command::new(Path::new(REPO).join(".tools/bin/helm"))
            .args(["template", "sidekey", "charts/sidekey", "--namespace", "sidekey-system", "-f"])
            .arg(&values)
            .current_dir(REPO)
            .output()
            .expect("helm");
        assert!(
            out.status.success(),
            "helm template -f {values:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
        // ServiceMonitor needs the Prometheus operator's CRD, which a bare cluster lacks.
        let docs: Vec<&str> = rendered
            .split("\n---")
            .filter(|d| d.contains("kind:") && !d.contains("kind: ServiceMonitor"))
            .collect();
        let out = support::kubectl_stdin(
            rig,
            &["apply", "--server-side", "--dry-run=server", "--validate=strict", "-f", "-"],
            Some(&docs.join("\n---")),
        );
        assert!(
            out.status.success(),
            "helm template -f {values:?} refused:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[derive(Debug)]
struct Case {
    file: String,
    expect: String,
    yaml: String,
}

/// `controller/tests/policies/reject/*.yaml`: each starts with `# expect: <text>`, a part of
/// the message the server answers with (and `render` too).
fn reject_corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policies/reject");
    let mut cases: Vec<Case> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let yaml = std::fs::read_to_string(&p).unwrap();
            let expect = yaml
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{p:?} has no '# expect: ' line"))
                .to_string();
            Case {
                file: p.file_name().unwrap().to_string_lossy().into_owned(),
                expect,
                yaml,
            }
        })
        .collect();
    cases.sort_by(|a, b| a.file.cmp(&b.file));
    assert!(cases.len() >= 20, "the corpus shrank: {} cases", cases.len());
    cases
}

/// The AuthPolicies that must be accepted: every example users copy, and the corpus's
/// accept/ folder (edge values just inside each bound).
fn accept_corpus() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["manifests/examples", "controller/tests/policies/accept"] {
        let dir = Path::new(REPO).join(dir);
        for p in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if p.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            for doc in text.split("\n---") {
                if doc.contains("kind: AuthPolicy") {
                    out.push((p.display().to_string(), doc.to_string()));
                }
            }
        }
    }
    assert!(out.len() >= 5, "examples not found: {out:?}");
    out
}

fn server_verdict(rig: &support::Rig, namespace: &str, yaml: &str) -> Result<(), String> {
    // Examples carry their own namespace; the dry run answers the same in ours.
    let yaml = regex::Regex::new(r"namespace: [a-z0-9-]+")
        .unwrap()
        .replace_all(yaml, format!("namespace: {namespace}"));
    let out = support::kubectl_stdin(
        rig,
        &[
            "-n",
            namespace,
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
        ],
        Some(&yaml),
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_refuses_every_bad_policy_with_the_documented_message_and_accepts_every_example() {
    let rig = crate::rig_or_skip!();
    let _shared = support::CLUSTER_LOCK.read().await;
    support::crds_installed(rig).await;
    let ns = TestNamespace::new(rig, "schema");

    let mut failures = Vec::new();
    for case in reject_corpus() {
        match server_verdict(rig, &ns.name, &case.yaml) {
            Ok(()) => failures.push(format!(
                "{}: ACCEPTED by the server, wanted an error containing {:?}",
                case.file, case.expect
            )),
            Err(e) if !e.contains(&case.expect) => {
                failures.push(format!("{}: refused, but the message lacks {:?}:\n{e}", case.file, case.expect))
            }
            Err(_) => {}
        }
    }
    for (file, yaml) in accept_corpus() {
        if let Err(e) = server_verdict(rig, &ns.name, &yaml) {
            failures.push(format!("{file}: refused by the server:\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // A dry run stores nothing.
    let left = kubectl(rig, &["-n", &ns.name, "get", "authpolicies", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}

/// The offline `render` gives the server's verdict for each case of the same corpus.
#[tokio::test(flavor = "multi_thread")]
async fn render_and_the_server_agree_on_every_policy() {
    let rig = crate::rig_or_skip!();
    let _shared = support::CLUSTER_LOCK.read().await;
    support::crds_installed(rig).await;
    let ns = TestNamespace::new(rig, "verdict");
    let dir = tempfile::tempdir().unwrap();
    let render = |yaml: &str| {
        let f = dir.path().join("policy.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey-controller"))
            .args(["validate", "-f"])
            .arg(&f)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let mut disagree = Vec::new();
    let cases = reject_corpus().into_iter().map(|c| (c.file, c.yaml)).chain(accept_corpus());
    for (file, yaml) in cases {
        let server = server_verdict(rig, &ns.name, &yaml);
        let offline = render(&yaml);
        if server.is_ok() != offline.is_ok() {
            disagree.push(format!("{file}: server {server:?}\nrender {offline:?}"));
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n\n"));
}

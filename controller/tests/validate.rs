//! `sidekey-controller validate` and `render`'s refusals, over the corpus in tests/policies/:
//!
//! - `reject/`: policies the API server refuses. Each file's first line, `# expect: <text>`,
//!   quotes part of the server's message, which the offline check must print too;
//! - `accept/`: values just inside each bound, which both must accept;
//! - `controller-reject/`: policies the server stores and the controller then refuses
//!   (`Accepted=False`), with the controller's message.
//!
//! controller/tests/kube_real/schema.rs runs `reject/` and `accept/` against a real API
//! server, so the expectations here are the server's own words.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sidekey_controller::offline::{self, Input, PolicyCheck};
use sidekey_controller::render::{RenderOptions, SidecarMode};
use sidekey_controller::validate::proxy_flags;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Case {
    file: PathBuf,
    expect: Option<String>,
}

fn corpus(dir: &str) -> Vec<Case> {
    let dir = manifest_dir().join("tests/policies").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).unwrap();
            let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).map(String::from);
            Case { file, expect }
        })
        .collect()
}

/// What `validate -f <file>` decides for each AuthPolicy in the file.
fn check(file: &Path) -> Vec<PolicyCheck> {
    offline::read_documents(&[file.to_path_buf()])
        .unwrap_or_else(|e| panic!("{file:?}: {e}"))
        .iter()
        .filter(|d| d.is_auth_policy())
        .map(offline::check_policy)
        .collect()
}

fn refused_with_expected_words(dir: &str, at_least: usize) {
    let cases = corpus(dir);
    assert!(cases.len() >= at_least, "{dir}: the corpus shrank to {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let expect = case
            .expect
            .unwrap_or_else(|| panic!("{:?}: first line must be '# expect: <text>'", case.file));
        let checks = check(&case.file);
        assert_eq!(checks.len(), 1, "{:?}: one AuthPolicy per file", case.file);
        let errors = &checks[0].errors;
        if !errors.iter().any(|e| e.contains(&expect)) {
            failures.push(format!("{}: want {expect:?}, got {errors:#?}", case.file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_reject_case_is_refused_in_the_api_servers_words() {
    refused_with_expected_words("reject", 25);
}

#[test]
fn every_controller_reject_case_is_refused_in_the_controllers_words() {
    refused_with_expected_words("controller-reject", 5);
}

#[test]
fn every_accept_case_and_every_example_policy_passes() {
    let mut files: Vec<PathBuf> = corpus("accept").into_iter().map(|c| c.file).collect();
    assert!(files.len() >= 8, "{files:?}");
    let examples = manifest_dir().join("../manifests/examples");
    files.extend(
        std::fs::read_dir(&examples)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml")),
    );
    let mut policies = 0;
    let mut failures = Vec::new();
    for file in &files {
        for c in check(file) {
            policies += 1;
            if !c.errors.is_empty() {
                failures.push(format!("{}: {}: {:#?}", file.display(), c.name(), c.errors));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(policies >= files.len(), "every file holds a policy");
}

/// Every CEL rule of the CRD has a reject case quoting its message.
#[test]
fn the_reject_corpus_covers_every_cel_rule() {
    use kube::CustomResourceExt;
    fn messages(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(m) => {
                for rule in m.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten() {
                    out.push(rule["message"].as_str().expect("every rule has a message").to_string());
                }
                m.values().for_each(|v| messages(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| messages(v, out)),
            _ => {}
        }
    }
    let mut rules = Vec::new();
    messages(
        &serde_json::to_value(sidekey_controller::api::AuthPolicy::crd()).unwrap(),
        &mut rules,
    );
    assert!(rules.len() >= 14, "{rules:?}");
    let corpus = corpus("reject");
    let missing: Vec<&String> = rules
        .iter()
        .filter(|r| {
            // A message is covered by an expect line quoting it (or its first 40 characters).
            let head: String = r.chars().take(40).collect();
            !corpus
                .iter()
                .any(|c| c.expect.as_deref().is_some_and(|e| e.contains(head.as_str())))
        })
        .collect();
    assert!(missing.is_empty(), "CEL rules without a reject case: {missing:#?}");
}

fn flag_list() -> String {
    let mut flags: Vec<&str> = sidekey_proxy::config::options::OPTIONS.iter().map(|o| o.flag).collect();
    flags.sort_unstable();
    flags.dedup();
    let mut out = String::from(
        "# Every sidekey-proxy flag, from the option table in proxy/src/config/options.rs.\n\
         # Generated: do not edit. The controller checks sidecar.extraArgs against this list\n\
         # without linking the proxy; controller/tests/validate.rs fails when it is stale.\n\
         # Refresh: SIDEKEY_UPDATE_GOLDEN=1 cargo test -p sidekey-controller --test validate\n",
    );
    for f in flags {
        out.push_str(&format!("--{f}\n"));
    }
    out
}

#[test]
fn committed_proxy_flag_list_is_current() {
    let path = manifest_dir().join("src/proxy_flags.txt");
    let want = flag_list();
    if std::env::var_os("SIDEKEY_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap_or_default() == want,
        "controller/src/proxy_flags.txt is stale: SIDEKEY_UPDATE_GOLDEN=1 cargo test -p sidekey-controller --test validate"
    );
}

/// The list must at least hold what the controller itself puts on the command line.
#[test]
fn every_flag_the_controller_renders_is_in_the_list() {
    let known: Vec<&str> = proxy_flags().collect();
    let mut seen = 0;
    for case in std::fs::read_dir(manifest_dir().join("tests/golden")).unwrap() {
        let case = case.unwrap().path();
        let input = Input::read(&[case.join("input.yaml")]).unwrap();
        let opts = RenderOptions {
            proxy_image: "img".into(),
            mode: SidecarMode::Native,
            service_account_issuer: None,
        };
        for r in offline::preview(&input, &opts) {
            for d in r.objects.iter().filter(|o| o["kind"] == "Deployment") {
                let spec = &d["spec"]["template"]["spec"];
                let containers = spec["initContainers"]
                    .as_array()
                    .into_iter()
                    .chain(spec["containers"].as_array())
                    .flatten();
                for c in containers.filter(|c| c["name"] == "sidekey-proxy") {
                    for arg in c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()) {
                        let name = arg.split_once('=').map_or(arg, |(n, _)| n);
                        assert!(known.contains(&name), "{}: renders {name}, not in proxy_flags.txt", case.display());
                        seen += 1;
                    }
                }
            }
        }
    }
    assert!(seen > 20, "{seen}");
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sidekey-controller")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn help_says_that_no_subcommand_runs_the_controller_against_a_cluster() {
    for flag in ["-h", "--help"] {
        let (code, stdout, _) = run(&[flag]);
        assert_eq!(code, 0);
        let help = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            help.contains("With no subcommand, sidekey-controller runs the controller against a cluster, so it needs a kubeconfig: $KUBECONFIG (else ~/.kube/config), or in a pod the in-cluster config of its service account."),
            "{flag}: {stdout}"
        );
    }
}

#[test]
fn validate_prints_a_line_per_policy_and_exits_1_when_any_is_invalid() {
    let policies = manifest_dir().join("tests/policies");
    let ok = policies.join("accept/client-id-256.yaml");
    let bad = policies.join("reject/access-empty.yaml");
    let ctl = policies.join("controller-reject/extra-args-unknown-flag.yaml");

    let (code, stdout, stderr) = run(&["validate", "-f", ok.to_str().unwrap()]);
    assert_eq!(
        (code, stdout.as_str(), stderr.as_str()),
        (0, "authpolicy/default/client-id-256: ok\n", "")
    );

    let (code, stdout, stderr) = run(&[
        "validate",
        "-f",
        ok.to_str().unwrap(),
        "-f",
        bad.to_str().unwrap(),
        "-f",
        ctl.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert_eq!(stdout, "authpolicy/default/client-id-256: ok\n");
    assert_eq!(
        stderr,
        "authpolicy/default/access-empty: spec.access: Invalid value: access needs at least one rule (emailDomains, allowedEmails or \
         allowedGroups): with none, no one could sign in\n\
         authpolicy/default/extra-args-unknown-flag: sidecar.extraArgs[1]: --cookie-samsite is not a sidekey-proxy flag; did you mean \
         --cookie-samesite?\n"
    );

    // A directory, with the other kinds of document ignored: the examples all pass.
    let examples = manifest_dir().join("../manifests/examples");
    let (code, stdout, stderr) = run(&["validate", "-f", examples.to_str().unwrap()]);
    assert_eq!((code, stderr.as_str()), (0, ""), "{stdout}");
    assert!(
        stdout.lines().count() >= 4 && stdout.lines().all(|l| l.ends_with(": ok")),
        "{stdout}"
    );

    let (code, _, stderr) = run(&["validate", "-f", "/nonexistent.yaml"]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("error: /nonexistent.yaml"), "{stderr}");
}

#[test]
fn render_refuses_with_the_reasons_on_stderr_and_nothing_on_stdout() {
    let conflict = manifest_dir().join("tests/golden/conflict/input.yaml");
    let (code, stdout, stderr) = run(&["render", "-f", conflict.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "authpolicy/apps/newer: would not be Accepted (Conflicted): Deployment apps/hello is already protected by AuthPolicy apps/older \
         (the oldest policy wins)\n"
    );

    // A policy alone: valid, but none of its targets is in the input.
    let lone = manifest_dir().join("tests/policies/accept/client-id-256.yaml");
    let (code, stdout, stderr) = run(&["render", "-f", lone.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "authpolicy/default/client-id-256: would not be Accepted (TargetNotFound): HTTPRoute default/app not found\n"
    );

    let bad = manifest_dir().join("tests/policies/reject/unknown-field-provider.yaml");
    let (code, stdout, stderr) = run(&["render", "-f", bad.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        "authpolicy/default/unknown-field-provider: .spec.provider.foo: field not declared in schema\n"
    );
}

#[test]
fn a_busy_metrics_address_exits_2_naming_the_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    // A client configuration that parses; the address is checked before any API request.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sidekey-controller"))
        .args(["--metrics-address", &addr, "--leader-election=false"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    // The controller logs JSON lines on stdout.
    let log = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("cannot listen on --metrics-address") && log.contains(&addr), "{log}");
}

//! `sidekey-controller render` and `validate`: the controller's pure core over YAML files
//! instead of a cluster. `validate` gives each AuthPolicy the verdict the API server and then
//! the controller would give it; `render` refuses unless every policy passes and would be
//! Accepted with all of its targets present, and then prints every Deployment and Service
//! the policies would patch, as they would look after the patch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::api::{AuthPolicy, TargetState};
use crate::cache::{Cache, ObjKey, Snapshot};
use crate::deployment::Deployment;
use crate::merge;
use crate::plan::{self, Plan};
use crate::render::RenderOptions;
use crate::schema_check;
use crate::validate::validate;

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{path}: document {doc} ({object}): {field}: {message}")]
    Object {
        path: String,
        doc: usize,
        object: String,
        field: String,
        message: String,
    },
    /// Policies that are invalid or would not be Accepted: one line per problem, each
    /// `authpolicy/<namespace>/<name>: <problem>`.
    #[error("{}", .0.join("\n"))]
    Refused(Vec<String>),
}

/// One YAML document from the input, with where it came from.
pub struct Document {
    pub path: String,
    /// 1-based, as editors count documents.
    pub index: usize,
    pub value: Value,
}

impl Document {
    fn kind(&self) -> &str {
        self.value.get("kind").and_then(Value::as_str).unwrap_or_default()
    }

    fn group(&self) -> &str {
        let api_version = self.value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        api_version.split_once('/').map_or("", |(g, _)| g)
    }

    pub fn is_auth_policy(&self) -> bool {
        self.group() == crate::api::GROUP && self.kind() == "AuthPolicy"
    }
}

fn files(path: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let err = |source| RenderError::Read {
        path: path.display().to_string(),
        source,
    };
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(err)? {
        let p = entry.map_err(err)?.path();
        if p.is_dir() {
            out.extend(files(&p)?);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Every document of the files (directories recursively, `*.yaml` and `*.yml`), with the
/// items of a `kind: List` as documents of their own.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<Document>, RenderError> {
    let mut out = Vec::new();
    for p in paths {
        for file in files(p)? {
            let path = file.display().to_string();
            let text = std::fs::read_to_string(&file).map_err(|source| RenderError::Read {
                path: path.clone(),
                source,
            })?;
            out.extend(parse_documents(&path, &text)?);
        }
    }
    Ok(out)
}

pub fn parse_documents(path: &str, text: &str) -> Result<Vec<Document>, RenderError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| RenderError::Yaml {
        path: path.into(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (i, doc) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
        let document = |value| Document {
            path: path.to_string(),
            index: i + 1,
            value,
        };
        if doc.get("kind").and_then(Value::as_str) == Some("List") {
            let items = doc.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            out.extend(items.into_iter().map(document));
        } else {
            out.push(document(doc));
        }
    }
    Ok(out)
}

fn typed<T: DeserializeOwned>(v: Value, path: &str, doc: usize, object: &str) -> Result<T, RenderError> {
    serde_path_to_error::deserialize(v).map_err(|e| RenderError::Object {
        path: path.into(),
        doc,
        object: object.into(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Like kubectl: an object without a namespace lands in "default".
fn default_namespace(v: &mut Value) {
    if v.pointer("/metadata/namespace").is_none()
        && let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.insert("namespace".into(), "default".into());
    }
}

fn key_of(v: &Value) -> ObjKey {
    let field = |f: &str| v.pointer(f).and_then(Value::as_str).unwrap_or_default().to_string();
    let ns = field("/metadata/namespace");
    ObjKey::new(if ns.is_empty() { "default".to_string() } else { ns }, field("/metadata/name"))
}

/// What one AuthPolicy document would meet: the API server's checks, then the controller's.
pub struct PolicyCheck {
    pub key: ObjKey,
    /// Empty when both would accept it.
    pub errors: Vec<String>,
    /// The policy as the server would store it, when the server would accept it (the
    /// controller may still refuse it: see `errors`).
    pub policy: Option<AuthPolicy>,
}

impl PolicyCheck {
    /// `authpolicy/<namespace>/<name>`, as `kubectl get -o name` would print it with the namespace.
    pub fn name(&self) -> String {
        format!("authpolicy/{}/{}", self.key.namespace, self.key.name)
    }
}

/// The API server's verdict ([`schema_check`]: schema, defaults, CEL), and when it would store
/// the policy, the controller's own checks ([`validate`]), which it reports as `Accepted=False`.
pub fn check_policy(doc: &Document) -> PolicyCheck {
    let mut raw = doc.value.clone();
    default_namespace(&mut raw);
    let key = key_of(&raw);
    let served = format!("{}/v1alpha1", crate::api::GROUP);
    let api_version = raw.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api_version != served {
        return PolicyCheck {
            key,
            errors: vec![format!(
                "no matches for kind \"AuthPolicy\" in version \"{api_version}\": the CRD serves {served}"
            )],
            policy: None,
        };
    }
    let checked = schema_check::check_auth_policy(&raw);
    if !checked.errors.is_empty() {
        return PolicyCheck {
            key,
            errors: checked.errors.iter().map(ToString::to_string).collect(),
            policy: None,
        };
    }
    match serde_path_to_error::deserialize::<_, AuthPolicy>(checked.object) {
        Ok(policy) => PolicyCheck {
            key,
            errors: validate(&policy),
            policy: Some(policy),
        },
        // The schema is generated from the types, so this means they drifted apart.
        Err(e) => PolicyCheck {
            key,
            errors: vec![format!("{}: {}", e.path(), e.inner())],
            policy: None,
        },
    }
}

/// The input objects, with where each came from.
#[derive(Default)]
pub struct Input {
    pub snapshot: Snapshot,
    /// The Deployments as given: the cache keeps only what the planner reads, the preview
    /// shows the whole object.
    deployments: BTreeMap<ObjKey, Value>,
    /// Every AuthPolicy's verdict, in input order.
    pub checks: Vec<PolicyCheck>,
}

impl Input {
    pub fn read(paths: &[PathBuf]) -> Result<Input, RenderError> {
        let mut input = Input {
            snapshot: Snapshot::new(),
            ..Default::default()
        };
        for doc in read_documents(paths)? {
            input.add_document(doc)?;
        }
        Ok(input)
    }

    pub fn add_text(&mut self, path: &str, text: &str) -> Result<(), RenderError> {
        for doc in parse_documents(path, text)? {
            self.add_document(doc)?;
        }
        Ok(())
    }

    fn add_document(&mut self, doc: Document) -> Result<(), RenderError> {
        if doc.is_auth_policy() {
            let mut check = check_policy(&doc);
            // The server stores a policy the controller then refuses; it still counts
            // when policies compete for a Deployment.
            if let Some(policy) = check.policy.take() {
                self.snapshot.add_policy(policy);
            }
            self.checks.push(check);
            return Ok(());
        }
        let (path, doc_index, mut v) = (doc.path, doc.index, doc.value);
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        default_namespace(&mut v);
        let key = key_of(&v);
        let object = format!("{kind} {key}");
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        let known = matches!(
            (group, kind.as_str()),
            ("gateway.networking.k8s.io", "HTTPRoute")
                | ("gateway.networking.k8s.io", "ReferenceGrant")
                | ("", "Service")
                | ("apps", "Deployment")
                | ("", "Secret")
        );
        if !known {
            return Ok(());
        }
        let path = path.as_str();
        if key.name.is_empty() {
            return Err(RenderError::Object {
                path: path.into(),
                doc: doc_index,
                object,
                field: "metadata.name".into(),
                message: "missing".into(),
            });
        }
        let s = &mut self.snapshot;
        match kind.as_str() {
            "HTTPRoute" => {
                s.add_route(typed(v, path, doc_index, &object)?);
            }
            "ReferenceGrant" => {
                s.add_grant(typed(v, path, doc_index, &object)?);
            }
            "Service" => {
                s.add_service(typed(v, path, doc_index, &object)?);
            }
            "Deployment" => {
                // Checked against the full type, so a malformed field is named.
                let full: k8s_openapi::api::apps::v1::Deployment = typed(v, path, doc_index, &object)?;
                let v = serde_json::to_value(&full).expect("a Deployment serializes");
                s.add_deployment(Deployment::from_json(&v).map_err(|e| RenderError::Object {
                    path: path.into(),
                    doc: doc_index,
                    object: object.clone(),
                    field: String::new(),
                    message: e.to_string(),
                })?);
                self.deployments.insert(key, v);
            }
            _ => {
                // A Secret counts as present; its data is not needed offline.
                s.add_secret(key, "offline");
            }
        }
        Ok(())
    }

    /// Each policy's problems, one line each as `validate` prints them.
    pub fn problems(&self) -> Vec<String> {
        self.checks
            .iter()
            .flat_map(|c| c.errors.iter().map(move |e| format!("{}: {e}", c.name())))
            .collect()
    }
}

/// One policy's preview: the plan and the patched objects.
pub struct Rendered {
    pub policy: ObjKey,
    pub plan: Plan,
    pub objects: Vec<Value>,
}

/// What the controller would do for each policy the API server would store, whatever the
/// outcome: an invalid, conflicted or target-less policy gets its status and no writes.
/// [`render`] is this plus the refusals.
pub fn preview(input: &Input, opts: &RenderOptions) -> Vec<Rendered> {
    let snap = &input.snapshot;
    let mut out = Vec::new();
    for policy in snap.policies() {
        let key = ObjKey::of(policy.as_ref());
        let plan = plan::plan(plan::Input {
            policy: &policy,
            cache: snap,
            opts,
            validation: validate(&policy),
            assume_rolled_out: true,
            sidecar_failures: &Default::default(),
            now: jiff::Timestamp::UNIX_EPOCH,
        });
        let mut objects = Vec::new();
        for a in &plan.deployment_applies {
            let mut live = input.deployments[&a.key].clone();
            merge::merge(&mut live, &a.body);
            objects.push(live);
        }
        for a in &plan.service_applies {
            let mut live = serde_json::to_value(snap.services[&a.key].as_ref()).expect("json");
            merge::merge(&mut live, &a.body);
            objects.push(live);
        }
        out.push(Rendered {
            policy: key,
            plan,
            objects,
        });
    }
    out
}

/// Why a previewed policy is not fit to apply: not Accepted, or a target missing from the
/// input (a preview of part of the targets would show less than `kubectl apply` does).
fn refusals(r: &Rendered) -> Vec<String> {
    let name = format!("authpolicy/{}/{}", r.policy.namespace, r.policy.name);
    let status = r.plan.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(c) = status
        .conditions
        .iter()
        .find(|c| c.type_ == crate::plan::condition::ACCEPTED && c.status != "True")
    {
        out.push(format!("{name}: would not be Accepted ({}): {}", c.reason, c.message));
    }
    for t in status.targets.iter().filter(|t| t.state == TargetState::NotFound) {
        let line = format!("{name}: target not in the input: {}", t.message);
        if !out.iter().any(|o| o.ends_with(&t.message)) {
            out.push(line);
        }
    }
    out
}

/// The preview, when every policy would be accepted by the API server and the controller,
/// would be Accepted, and finds all of its targets in the input; otherwise every reason why not.
pub fn render(input: &Input, opts: &RenderOptions) -> Result<Vec<Rendered>, RenderError> {
    let problems = input.problems();
    if !problems.is_empty() {
        return Err(RenderError::Refused(problems));
    }
    let rendered = preview(input, opts);
    let refused: Vec<String> = rendered.iter().flat_map(refusals).collect();
    if !refused.is_empty() {
        return Err(RenderError::Refused(refused));
    }
    Ok(rendered)
}

/// The YAML `render` prints: a comment per policy with its status, then the patched objects.
pub fn to_yaml(rendered: &[Rendered]) -> String {
    let mut out = String::new();
    for r in rendered {
        let status = r.plan.status.clone().unwrap_or_default();
        out.push_str(&format!("# AuthPolicy {}\n", r.policy));
        for c in &status.conditions {
            out.push_str(&format!("#   {}={} ({}): {}\n", c.type_, c.status, c.reason, c.message));
        }
        for t in &status.targets {
            out.push_str(&format!(
                "#   target route={} service={} port={} deployment={}: {:?}{}\n",
                t.route.as_deref().unwrap_or("-"),
                t.service.as_deref().unwrap_or("-"),
                t.port.map_or("-".to_string(), |p| p.to_string()),
                t.deployment.as_deref().unwrap_or("-"),
                t.state,
                if t.message.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", t.message)
                }
            ));
        }
        if let Some(wi) = &status.workload_identity {
            for s in &wi.subjects {
                out.push_str(&format!("#   federated credential subject: {s} (audience {})\n", wi.audience));
            }
        }
        for s in &r.plan.create_secrets {
            out.push_str(&format!("#   the controller creates Secret {s} (a random cookie secret)\n"));
        }
        for o in &r.objects {
            out.push_str("---\n");
            out.push_str(&serde_saphyr::to_string(o).expect("yaml serializes"));
        }
    }
    out
}

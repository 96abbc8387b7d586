//! `sidekey-controller render`: the controller's pure core over YAML files instead of a
//! cluster. Prints every Deployment and Service the policies would patch, as they would look
//! after the patch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

use crate::cache::{Cache, ObjKey, Snapshot};
use crate::deployment::Deployment;
use crate::merge;
use crate::plan::{self, Plan};
use crate::render::RenderOptions;
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
    #[error("{path}: AuthPolicy {policy} is invalid: {problems}")]
    Invalid { path: String, policy: String, problems: String },
}

/// The input objects, with where each came from.
#[derive(Default)]
pub struct Input {
    pub snapshot: Snapshot,
    origin: BTreeMap<(String, ObjKey), String>,
    /// The Deployments as given: the cache keeps only what the planner reads, the preview
    /// shows the whole object.
    deployments: BTreeMap<ObjKey, Value>,
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

fn typed<T: DeserializeOwned>(v: Value, path: &str, doc: usize, object: &str) -> Result<T, RenderError> {
    serde_path_to_error::deserialize(v).map_err(|e| RenderError::Object {
        path: path.into(),
        doc,
        object: object.into(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

impl Input {
    pub fn read(paths: &[PathBuf]) -> Result<Input, RenderError> {
        let mut input = Input {
            snapshot: Snapshot::new(),
            ..Default::default()
        };
        for p in paths {
            for file in files(p)? {
                let path = file.display().to_string();
                let text = std::fs::read_to_string(&file).map_err(|source| RenderError::Read {
                    path: path.clone(),
                    source,
                })?;
                input.add_text(&path, &text)?;
            }
        }
        Ok(input)
    }

    pub fn add_text(&mut self, path: &str, text: &str) -> Result<(), RenderError> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| RenderError::Yaml {
            path: path.into(),
            message: e.to_string(),
        })?;
        for (i, doc) in docs.into_iter().enumerate().filter(|(_, d)| !d.is_null()) {
            let n = i + 1;
            if doc.get("kind").and_then(Value::as_str) == Some("List") {
                for item in doc.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                    self.add_object(path, n, item)?;
                }
                continue;
            }
            self.add_object(path, n, doc)?;
        }
        Ok(())
    }

    fn add_object(&mut self, path: &str, doc: usize, mut v: Value) -> Result<(), RenderError> {
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        let api_version = v.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        if v.pointer("/metadata/namespace").is_none() {
            // Like kubectl: objects without a namespace land in "default".
            if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                m.insert("namespace".into(), "default".into());
            }
        }
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let object = format!("{kind} {ns}/{name}");
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        let known = matches!(
            (group, kind.as_str()),
            ("sidekey.dev", "AuthPolicy")
                | ("gateway.networking.k8s.io", "HTTPRoute")
                | ("gateway.networking.k8s.io", "ReferenceGrant")
                | ("", "Service")
                | ("apps", "Deployment")
                | ("", "Secret")
        );
        if !known {
            return Ok(());
        }
        if name.is_empty() {
            return Err(RenderError::Object {
                path: path.into(),
                doc,
                object,
                field: "metadata.name".into(),
                message: "missing".into(),
            });
        }
        let key = ObjKey::new(&ns, &name);
        self.origin.insert((kind.clone(), key.clone()), path.to_string());
        let s = &mut self.snapshot;
        match kind.as_str() {
            "AuthPolicy" => {
                s.add_policy(typed(v, path, doc, &object)?);
            }
            "HTTPRoute" => {
                s.add_route(typed(v, path, doc, &object)?);
            }
            "ReferenceGrant" => {
                s.add_grant(typed(v, path, doc, &object)?);
            }
            "Service" => {
                s.add_service(typed(v, path, doc, &object)?);
            }
            "Deployment" => {
                // Checked against the full type, so a malformed field is named.
                let full: k8s_openapi::api::apps::v1::Deployment = typed(v, path, doc, &object)?;
                let v = serde_json::to_value(&full).expect("a Deployment serializes");
                s.add_deployment(Deployment::from_json(&v).map_err(|e| RenderError::Object {
                    path: path.into(),
                    doc,
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
}

/// One policy's preview: the plan and the patched objects.
pub struct Rendered {
    pub policy: ObjKey,
    pub plan: Plan,
    pub objects: Vec<Value>,
}

pub fn render(input: &Input, opts: &RenderOptions) -> Result<Vec<Rendered>, RenderError> {
    let snap = &input.snapshot;
    let mut out = Vec::new();
    for policy in snap.policies() {
        let key = ObjKey::of(policy.as_ref());
        let problems = validate(&policy);
        if !problems.is_empty() {
            return Err(RenderError::Invalid {
                path: input.origin.get(&("AuthPolicy".into(), key.clone())).cloned().unwrap_or_default(),
                policy: key.to_string(),
                problems: problems.join("; "),
            });
        }
        let plan = plan::plan(plan::Input {
            policy: &policy,
            cache: snap,
            opts,
            validation: problems,
            assume_rolled_out: true,
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
    Ok(out)
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

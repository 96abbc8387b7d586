//! The parts of an `apps/v1` Deployment the controller reads, decoded straight from the
//! API's JSON. The full k8s-openapi type holds every optional field of every container and
//! volume inline (a Volume alone is 3.2 KB before any data): about 25 KB per injected
//! Deployment, which at 5,000 Deployments was nearly all of the controller's memory. This
//! view keeps what the resolver and planner read (pod template labels, container ports,
//! service account, rollout status, sidekey's annotations) and sidekey's own containers and
//! volumes as compact JSON text for the "already applied?" check; the rest is dropped while
//! decoding, managed fields and other tools' annotations included.

use crate::names::{ANNOTATION_PREFIX, CONTAINER_NAME, PROVIDER_CA_VOLUME, TOKEN_VOLUME};
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Deployment {
    #[serde(default, deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<DeploymentSpec>,
    #[serde(default)]
    pub status: Option<DeploymentStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub template: PodTemplate,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PodTemplate {
    #[serde(default)]
    pub metadata: Option<TemplateMeta>,
    #[serde(default)]
    pub spec: Option<PodSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct TemplateMeta {
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "our_annotations")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub init_containers: Vec<Container>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub volumes: Vec<Volume>,
}

/// A container's name and ports; sidekey's own sidecar also keeps its whole JSON.
#[derive(Clone, Debug, Default)]
pub struct Container {
    pub name: String,
    pub ports: Option<Vec<ContainerPort>>,
    pub ours: Option<Box<str>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: i32,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// A volume's name; sidekey's own volumes (token, provider CA) also keep their whole JSON.
#[derive(Clone, Debug, Default)]
pub struct Volume {
    pub name: String,
    pub ours: Option<Box<str>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    #[serde(default)]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub replicas: Option<i32>,
    #[serde(default)]
    pub updated_replicas: Option<i32>,
    #[serde(default)]
    pub available_replicas: Option<i32>,
}

impl<'de> Deserialize<'de> for Container {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a Value so any deserializer works (kube's watch events may buffer).
        let v = Value::deserialize(d)?;
        #[derive(Deserialize)]
        struct Slim {
            name: String,
            #[serde(default)]
            ports: Option<Vec<ContainerPort>>,
        }
        let Slim { name, ports } = Slim::deserialize(&v).map_err(serde::de::Error::custom)?;
        let ours = (name == CONTAINER_NAME).then(|| v.to_string().into_boxed_str());
        Ok(Container { name, ports, ours })
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| serde::de::Error::missing_field("name"))?
            .to_string();
        let ours = [TOKEN_VOLUME, PROVIDER_CA_VOLUME]
            .contains(&name.as_str())
            .then(|| v.to_string().into_boxed_str());
        Ok(Volume { name, ours })
    }
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Only sidekey's annotations are kept: others (kubectl's last-applied configuration can be
/// as large as the object) would only cost memory.
fn our_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let all = Option::<BTreeMap<String, String>>::deserialize(d)?;
    Ok(all.map(|a| a.into_iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).collect()))
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let mut m = ObjectMeta::deserialize(d)?;
    m.managed_fields = None;
    m.labels = None;
    if let Some(a) = m.annotations.take() {
        m.annotations = Some(a.into_iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).collect());
    }
    Ok(m)
}

impl k8s_openapi::Resource for Deployment {
    const API_VERSION: &'static str = "apps/v1";
    const GROUP: &'static str = "apps";
    const KIND: &'static str = "Deployment";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "deployments";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for Deployment {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// From the full type, as tests and tools hold it.
impl From<k8s_openapi::api::apps::v1::Deployment> for Deployment {
    fn from(d: k8s_openapi::api::apps::v1::Deployment) -> Self {
        Deployment::from_json(&serde_json::to_value(d).expect("a Deployment serializes")).expect("a valid Deployment decodes")
    }
}

impl Deployment {
    pub fn from_json(v: &Value) -> Result<Self, serde_json::Error> {
        Deployment::deserialize(v)
    }

    fn template_spec(&self) -> Option<&PodSpec> {
        self.spec.as_ref()?.template.spec.as_ref()
    }

    /// The fields sidekey applies, as they are on the live object: what a desired apply is
    /// compared with ([`crate::merge::contains`]) to tell whether it would change anything.
    pub fn applied_fields(&self) -> Value {
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
        let ours = |list: &[Container]| -> Vec<Value> { list.iter().filter_map(|c| c.ours.as_deref().map(parse)).collect() };
        let spec = self.template_spec();
        let template_annotations = self
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.clone())
            .unwrap_or_default();
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self.metadata.name,
                "namespace": self.metadata.namespace,
                "annotations": self.metadata.annotations.clone().unwrap_or_default(),
            },
            "spec": {"template": {
                "metadata": {"annotations": template_annotations},
                "spec": {
                    "initContainers": spec.map(|s| ours(&s.init_containers)).unwrap_or_default(),
                    "containers": spec.map(|s| ours(&s.containers)).unwrap_or_default(),
                    "volumes": spec
                        .map(|s| s.volumes.iter().filter_map(|v| v.ours.as_deref().map(parse)).collect::<Vec<_>>())
                        .unwrap_or_default(),
                },
            }},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge;

    fn full() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", "generation": 3, "resourceVersion": "42",
                "labels": {"app": "web"},
                "annotations": {"sidekey.dev/policy": "apps/p", "kubectl.kubernetes.io/last-applied-configuration": "{…}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"sidekey.dev/config-hash": "abc", "prometheus.io/scrape": "true"}},
                "spec": {
                    "serviceAccountName": "web",
                    "initContainers": [
                        {"name": "migrate", "image": "m:1"},
                        {"name": "sidekey-proxy", "image": "p:1", "restartPolicy": "Always", "args": ["--x"],
                         "terminationMessagePath": "/dev/termination-log"},
                    ],
                    "containers": [{"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}],
                        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "sidekey-token", "projected": {"sources": []}}],
                }}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
        })
    }

    #[test]
    fn keeps_what_the_controller_reads_and_drops_the_rest() {
        let d = Deployment::from_json(&full()).unwrap();
        assert_eq!(d.metadata.generation, Some(3));
        assert_eq!(d.metadata.resource_version.as_deref(), Some("42"));
        assert!(d.metadata.managed_fields.is_none());
        assert_eq!(
            d.metadata.annotations.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["sidekey.dev/policy"]
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        let t = spec.template.metadata.as_ref().unwrap();
        assert_eq!(t.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(t.annotations.as_ref().unwrap().len(), 1);
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("web"));
        assert_eq!(pod.containers[0].ports.as_ref().unwrap()[0].container_port, 8080);
        assert!(pod.containers[0].ours.is_none(), "the app's container is not kept whole");
        assert!(pod.init_containers[0].ours.is_none());
        assert!(pod.init_containers[1].ours.is_some());
        assert_eq!(pod.volumes.iter().filter(|v| v.ours.is_some()).count(), 1);
        assert_eq!(d.status.as_ref().unwrap().updated_replicas, Some(2));
    }

    #[test]
    fn applied_fields_answer_containment_like_the_full_object() {
        let full = full();
        let d = Deployment::from_json(&full).unwrap();
        let live = d.applied_fields();
        let same = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", "annotations": {"sidekey.dev/policy": "apps/p"}},
            "spec": {"template": {"metadata": {"annotations": {"sidekey.dev/config-hash": "abc"}},
                "spec": {"initContainers": [{"name": "sidekey-proxy", "image": "p:1", "restartPolicy": "Always", "args": ["--x"]}],
                         "volumes": [{"name": "sidekey-token", "projected": {"sources": []}}]}}}});
        assert!(merge::contains(&full, &same) && merge::contains(&live, &same));
        for changed in [
            json!({"metadata": {"annotations": {"sidekey.dev/policy": "apps/q"}}}),
            json!({"spec": {"template": {"metadata": {"annotations": {"sidekey.dev/config-hash": "def"}}}}}),
            json!({"spec": {"template": {"spec": {"initContainers": [{"name": "sidekey-proxy", "image": "p:2"}]}}}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "sidekey-proxy", "image": "p:1"}]}}}}),
        ] {
            let mut desired = same.clone();
            merge::merge(&mut desired, &changed);
            assert_eq!(merge::contains(&full, &desired), merge::contains(&live, &desired), "{changed}");
            assert!(!merge::contains(&live, &desired), "{changed}");
        }
    }

    #[test]
    fn tolerates_nulls_and_missing_parts() {
        let d = Deployment::from_json(
            &json!({"metadata": {"name": "x"}, "spec": {"template": {"spec": {"containers": null, "volumes": null}}}}),
        )
        .unwrap();
        assert!(d.template_spec().unwrap().containers.is_empty());
        assert!(Deployment::from_json(&json!({"metadata": {"name": "x"}})).unwrap().spec.is_none());
        let _ = d.applied_fields();
    }
}

//! Policy → routes → Services → Deployments → ports, over cached state. Pure.

use crate::names::{ANNOTATION_ORIGINAL_PORTS, SIDECAR_PORT_NAME};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::deployment::Deployment;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::{AuthPolicy, GATEWAY_GROUP, TargetRef, TargetState, TargetStatus};
use crate::cache::{Cache, ObjKey};

/// A Service port that leads to a Deployment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub service: ObjKey,
    pub port: i32,
    pub protocol: String,
    /// The Service port's targetPort before sidekey touched it.
    pub original_target: String,
    pub route: Option<String>,
}

/// A Deployment the policy protects.
#[derive(Clone, Debug)]
pub struct Workload {
    pub deployment: Arc<Deployment>,
    /// The app's container port the sidecar forwards to.
    pub upstream_port: i32,
    pub bindings: Vec<Binding>,
    pub service_account: String,
}

/// Everything a policy's resolution looked at, found or not, so a change to any of it
/// (including an object appearing later) maps back to the policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub routes: BTreeSet<ObjKey>,
    pub services: BTreeSet<ObjKey>,
    pub deployments: BTreeSet<ObjKey>,
    pub secrets: BTreeSet<ObjKey>,
}

#[derive(Clone, Debug, Default)]
pub struct Resolution {
    pub targets: Vec<TargetStatus>,
    pub workloads: BTreeMap<ObjKey, Workload>,
    pub hostnames: Vec<String>,
    pub touched: Touched,
}

pub fn resolve(policy: &AuthPolicy, cache: &dyn Cache) -> Resolution {
    let ns = policy.namespace().unwrap_or_default();
    let mut r = Resolver {
        cache,
        ns: &ns,
        out: Resolution::default(),
        seen: BTreeSet::new(),
    };
    for tref in &policy.spec.target_refs {
        r.target(tref);
    }
    r.pick_upstream_ports();
    r.out.targets.sort();
    r.out.targets.dedup();
    r.out.hostnames.dedup();
    r.out
}

struct Resolver<'a> {
    cache: &'a dyn Cache,
    ns: &'a str,
    out: Resolution,
    seen: BTreeSet<(ObjKey, i32, ObjKey)>,
}

fn target(route: Option<&str>, service: Option<&ObjKey>, state: TargetState, message: String) -> TargetStatus {
    TargetStatus {
        route: route.map(str::to_string),
        service: service.map(|s| s.to_string()),
        port: None,
        deployment: None,
        state,
        message,
    }
}

impl Resolver<'_> {
    fn target(&mut self, tref: &TargetRef) {
        match (tref.group.as_str(), tref.kind.as_str()) {
            (GATEWAY_GROUP, "HTTPRoute") => self.route(tref),
            ("", "Service") => {
                let key = ObjKey::new(self.ns, &tref.name);
                self.service(None, &key, PortSelector::from_section(tref.section_name.as_deref()));
            }
            (group, kind) => self.out.targets.push(target(
                None,
                None,
                TargetState::Unsupported,
                format!(
                    "targetRef {group}/{kind} {}: only HTTPRoute and Service targets are supported",
                    tref.name
                ),
            )),
        }
    }

    fn route(&mut self, tref: &TargetRef) {
        let key = ObjKey::new(self.ns, &tref.name);
        self.out.touched.routes.insert(key.clone());
        let label = key.name.clone();
        if !self.cache.routes_available() {
            let msg = "the HTTPRoute CRD (Gateway API) is not installed in this cluster; target a Service instead".to_string();
            self.out.targets.push(target(Some(&label), None, TargetState::NotFound, msg));
            return;
        }
        let Some(route) = self.cache.route(&key) else {
            self.out.targets.push(target(
                Some(&label),
                None,
                TargetState::NotFound,
                format!("HTTPRoute {key} not found"),
            ));
            return;
        };
        self.out.hostnames.extend(route.spec.hostnames.iter().cloned());
        let rules: Vec<_> = route
            .spec
            .rules
            .iter()
            .filter(|rule| tref.section_name.as_ref().is_none_or(|s| rule.name.as_ref() == Some(s)))
            .collect();
        if rules.is_empty() {
            let msg = match &tref.section_name {
                Some(s) => format!("HTTPRoute {key} has no rule named {s}"),
                None => format!("HTTPRoute {key} has no rules"),
            };
            self.out.targets.push(target(Some(&label), None, TargetState::NotFound, msg));
            return;
        }
        for backend in rules.iter().flat_map(|r| &r.backend_refs) {
            if !backend.is_service() {
                let msg = format!(
                    "backendRef {}/{} {}: only Service backends can be protected",
                    backend.group.as_deref().unwrap_or(""),
                    backend.kind.as_deref().unwrap_or(""),
                    backend.name
                );
                self.out.targets.push(target(Some(&label), None, TargetState::Unsupported, msg));
                continue;
            }
            let svc_ns = backend.namespace.as_deref().unwrap_or(self.ns);
            let svc_key = ObjKey::new(svc_ns, &backend.name);
            if svc_ns != self.ns
                && !self
                    .cache
                    .grants_in(svc_ns)
                    .iter()
                    .any(|g| g.permits_route_to_service(self.ns, &backend.name))
            {
                let msg = format!(
                    "no ReferenceGrant in namespace {svc_ns} lets HTTPRoutes from {} reference Service {}",
                    self.ns, backend.name
                );
                self.out
                    .targets
                    .push(target(Some(&label), Some(&svc_key), TargetState::RefNotPermitted, msg));
                continue;
            }
            let Some(port) = backend.port else {
                let msg = format!("backendRef to Service {svc_key} has no port");
                self.out
                    .targets
                    .push(target(Some(&label), Some(&svc_key), TargetState::NotFound, msg));
                continue;
            };
            self.service(Some(&label), &svc_key, PortSelector::Number(port));
        }
    }

    fn service(&mut self, route: Option<&str>, key: &ObjKey, ports: PortSelector<'_>) {
        self.out.touched.services.insert(key.clone());
        let Some(svc) = self.cache.service(key) else {
            self.out
                .targets
                .push(target(route, Some(key), TargetState::NotFound, format!("Service {key} not found")));
            return;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let selected: Vec<&ServicePort> = spec.ports.iter().flatten().filter(|p| ports.matches(p)).collect();
        if selected.is_empty() {
            self.out.targets.push(target(
                route,
                Some(key),
                TargetState::NotFound,
                format!("Service {key} has no port {ports}"),
            ));
            return;
        }
        let selector = spec.selector.unwrap_or_default();
        if selector.is_empty() {
            let msg = format!("Service {key} has no selector; sidekey finds Deployments through it");
            self.out.targets.push(target(route, Some(key), TargetState::Unsupported, msg));
            return;
        }
        let deployments: Vec<_> = self
            .cache
            .deployments_in(&key.namespace)
            .into_iter()
            .filter(|d| template_matches(d, &selector))
            .collect();
        if deployments.is_empty() {
            let msg = format!(
                "no Deployment in {} has pod labels matching Service {}'s selector",
                key.namespace, key.name
            );
            self.out.targets.push(target(route, Some(key), TargetState::NotFound, msg));
            return;
        }
        for port in selected {
            let original = original_target(&svc, port);
            let protocol = port.protocol.clone().unwrap_or_else(|| "TCP".into());
            for d in &deployments {
                let dkey = ObjKey::of(d.as_ref());
                self.out.touched.deployments.insert(dkey.clone());
                let mut t = target(route, Some(key), TargetState::Pending, String::new());
                t.port = Some(port.port);
                t.deployment = Some(dkey.name.clone());
                if protocol != "TCP" {
                    t.state = TargetState::Unsupported;
                    t.message = format!("port {} is {protocol}; sidekey-proxy serves HTTP over TCP", port.port);
                    self.out.targets.push(t);
                    continue;
                }
                let Some(container_port) = container_port(d, &original) else {
                    t.state = TargetState::Unsupported;
                    t.message = format!("Deployment {dkey} has no container port named {original}");
                    self.out.targets.push(t);
                    continue;
                };
                self.out.targets.push(t);
                if !self.seen.insert((key.clone(), port.port, dkey.clone())) {
                    continue;
                }
                let w = self.out.workloads.entry(dkey.clone()).or_insert_with(|| Workload {
                    deployment: d.clone(),
                    upstream_port: container_port,
                    bindings: Vec::new(),
                    service_account: service_account(d),
                });
                w.bindings.push(Binding {
                    service: key.clone(),
                    port: port.port,
                    protocol: protocol.clone(),
                    original_target: original.clone(),
                    route: route.map(str::to_string),
                });
            }
        }
    }

    /// One sidecar forwards to one app port. Bindings that lead to another port of the same
    /// Deployment stay unprotected and say so (Ready stays False), rather than being half-done.
    fn pick_upstream_ports(&mut self) {
        for (dkey, w) in self.out.workloads.iter_mut() {
            let deployment = w.deployment.clone();
            let upstream = w.upstream_port;
            w.bindings.retain(|b| {
                let port = container_port(&deployment, &b.original_target);
                if port == Some(upstream) {
                    return true;
                }
                for t in self.out.targets.iter_mut() {
                    if t.deployment.as_deref() == Some(&dkey.name)
                        && t.service.as_deref() == Some(&b.service.to_string())
                        && t.port == Some(b.port)
                        && t.state == TargetState::Pending
                    {
                        t.state = TargetState::Unsupported;
                        t.message = format!(
                            "Deployment {dkey} is already protected on container port {upstream}; one sidecar forwards to one port, so port {} of Service {} stays unprotected",
                            b.port, b.service
                        );
                    }
                }
                false
            });
        }
    }
}

enum PortSelector<'a> {
    All,
    Name(&'a str),
    Number(i32),
}

impl<'a> PortSelector<'a> {
    fn from_section(section: Option<&'a str>) -> Self {
        section.map_or(PortSelector::All, PortSelector::Name)
    }
    fn matches(&self, p: &ServicePort) -> bool {
        match self {
            PortSelector::All => true,
            PortSelector::Name(n) => p.name.as_deref() == Some(n),
            PortSelector::Number(n) => p.port == *n,
        }
    }
}

impl std::fmt::Display for PortSelector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortSelector::All => f.write_str("at all"),
            PortSelector::Name(n) => write!(f, "named {n}"),
            PortSelector::Number(n) => write!(f, "{n}"),
        }
    }
}

fn template_matches(d: &Deployment, selector: &BTreeMap<String, String>) -> bool {
    let labels = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    labels.is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
}

fn service_account(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

pub fn port_key(port: i32, protocol: &str) -> String {
    format!("{port}/{protocol}")
}

/// The targetPort as it was before sidekey retargeted it (from our annotation), as text.
pub fn original_target(svc: &Service, port: &ServicePort) -> String {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    let remembered = svc
        .annotations()
        .get(ANNOTATION_ORIGINAL_PORTS)
        .and_then(|a| serde_json::from_str::<BTreeMap<String, String>>(a).ok())
        .and_then(|m| m.get(&port_key(port.port, protocol)).cloned());
    match (&port.target_port, remembered) {
        (Some(IntOrString::String(s)), Some(orig)) if s == SIDECAR_PORT_NAME => orig,
        (Some(IntOrString::Int(n)), _) => n.to_string(),
        (Some(IntOrString::String(s)), _) => s.clone(),
        (None, _) => port.port.to_string(),
    }
}

/// A targetPort (number or container port name) resolved against the Deployment's pod template.
pub fn container_port(d: &Deployment, target: &str) -> Option<i32> {
    if let Ok(n) = target.parse::<i32>() {
        return Some(n);
    }
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(target))
        .map(|p| p.container_port)
}

/// For each Deployment, the policy that protects it. Policies that are not being deleted
/// compete; the oldest wins (then by namespace/name), so the outcome never depends on
/// reconcile order. Each candidate policy is resolved once, however many Deployments.
pub fn winners(cache: &dyn Cache, deployments: &BTreeSet<ObjKey>) -> BTreeMap<ObjKey, Arc<AuthPolicy>> {
    let namespaces: BTreeSet<&str> = deployments.iter().map(|d| d.namespace.as_str()).collect();
    // Policies can reach a namespace from their own, or from any a ReferenceGrant there names.
    let mut reaching: BTreeSet<String> = namespaces.iter().map(|n| n.to_string()).collect();
    for ns in &namespaces {
        reaching.extend(
            cache
                .grants_in(ns)
                .iter()
                .flat_map(|g| g.spec.from.iter().map(|f| f.namespace.clone())),
        );
    }
    let mut out: BTreeMap<ObjKey, Arc<AuthPolicy>> = BTreeMap::new();
    for p in reaching.iter().flat_map(|ns| cache.policies_in(ns)) {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        for dkey in resolve(&p, cache).workloads.into_keys().filter(|d| deployments.contains(d)) {
            match out.get(&dkey) {
                Some(current) if age_key(current) <= age_key(&p) => {}
                _ => {
                    out.insert(dkey, p.clone());
                }
            }
        }
    }
    out
}

pub fn age_key(p: &AuthPolicy) -> (Option<jiff::Timestamp>, ObjKey) {
    (p.metadata.creation_timestamp.as_ref().map(|t| t.0), ObjKey::of(p))
}

#[cfg(test)]
mod tests;

//! Policy + resolved workload → the server-side-apply patches that hold only sidekey's fields.
//! Pure: golden-file tested, and shared by the controller and `sidekey-controller render`.

use crate::names::{
    ANNOTATION_CONFIG_HASH, ANNOTATION_ORIGINAL_PORTS, ANNOTATION_POLICY, CONTAINER_NAME, COOKIE_SECRET_KEY, PROVIDER_CA_DIR,
    PROVIDER_CA_VOLUME, SIDECAR_PORT_NAME, TOKEN_DIR, TOKEN_VOLUME,
};
use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{AuthPolicy, DEFAULT_AUDIENCE, DEFAULT_TOKEN_EXPIRATION, ProviderType, SecretKeyRef, StoreType};
use crate::cache::{Cache, ObjKey};
use crate::resolve::{Workload, port_key};

/// Native sidecars (an init container with `restartPolicy: Always`) need Kubernetes ≥ 1.29.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SidecarMode {
    Native,
    /// A regular container, for older clusters: it may start after the app and does not
    /// keep Jobs alive, but protects the same way.
    Regular,
}

#[derive(Clone, Debug)]
pub struct RenderOptions {
    pub proxy_image: String,
    pub mode: SidecarMode,
    /// The cluster's service-account issuer (its OIDC discovery document's `issuer`), when
    /// the controller could read it: reported in the status as the issuer to register.
    pub service_account_issuer: Option<String>,
}

/// The Secret the controller generates when `session.cookieSecretRef` is absent.
pub fn generated_cookie_secret_name(policy: &AuthPolicy) -> String {
    format!("{}-sidekey-cookie", policy.metadata.name.as_deref().unwrap_or_default())
}

/// Whether the controller generates (and owns) the cookie secret for this policy.
pub fn uses_generated_cookie_secret(policy: &AuthPolicy) -> bool {
    policy.spec.session.as_ref().and_then(|s| s.cookie_secret_ref.as_ref()).is_none()
}

pub fn cookie_secret_ref(policy: &AuthPolicy) -> SecretKeyRef {
    policy
        .spec
        .session
        .as_ref()
        .and_then(|s| s.cookie_secret_ref.clone())
        .unwrap_or_else(|| SecretKeyRef {
            name: generated_cookie_secret_name(policy),
            key: COOKIE_SECRET_KEY.into(),
        })
}

/// Every Secret the sidecar reads (in the Deployment's namespace).
pub fn secret_refs(policy: &AuthPolicy) -> Vec<SecretKeyRef> {
    let mut refs = vec![cookie_secret_ref(policy)];
    refs.extend(policy.spec.provider.client_secret_ref.clone());
    if let Some(r) = redis_ref(policy) {
        refs.push(r);
    }
    refs
}

fn redis_ref(policy: &AuthPolicy) -> Option<SecretKeyRef> {
    let store = policy.spec.session.as_ref()?.store.as_ref()?;
    (store.type_ == StoreType::Redis).then(|| store.redis.as_ref().map(|r| r.url_secret_ref.clone()))?
}

/// The proxy's command line for one workload. Every flag is a sidekey-proxy (oauth2-proxy)
/// flag; a test parses the result with the proxy's own parser.
pub fn proxy_args(policy: &AuthPolicy, upstream_port: i32, hostnames: &[String]) -> Vec<String> {
    let spec = &policy.spec;
    let p = &spec.provider;
    let mut a = vec![
        format!("--http-address=0.0.0.0:{}", spec.sidecar_port()),
        format!("--upstream=http://127.0.0.1:{upstream_port}/"),
        format!(
            "--provider={}",
            match p.type_ {
                ProviderType::EntraId => "entra-id",
                ProviderType::Oidc => "oidc",
            }
        ),
        format!("--oidc-issuer-url={}", p.issuer_url),
        format!("--client-id={}", p.client_id),
        "--logging-format=json".into(),
    ];
    if p.ca_bundle.is_some() {
        a.push(format!("--provider-ca-file={PROVIDER_CA_DIR}/ca.crt"));
    }
    if let Some(url) = &p.graph_url {
        a.push(format!("--entra-id-graph-url={url}"));
    }
    if p.workload_identity.is_some() {
        a.push("--entra-id-federated-token-auth=true".into());
    }
    if let Some(url) = redirect_url(policy, hostnames) {
        a.push(format!("--redirect-url={url}"));
    }
    if !p.scopes.is_empty() {
        a.push(format!("--scope={}", p.scopes.join(" ")));
    }
    a.extend(p.extra_audiences.iter().map(|x| format!("--oidc-extra-audience={x}")));
    if let Some(c) = &p.claims {
        a.extend(c.email.iter().map(|x| format!("--oidc-email-claim={x}")));
        a.extend(c.user.iter().map(|x| format!("--user-id-claim={x}")));
        a.extend(c.groups.iter().map(|x| format!("--oidc-groups-claim={x}")));
    }
    let access = &spec.access;
    let mut domains = access.email_domains.clone();
    // Groups alone are a complete rule: any email, then the group check. Never widen an
    // access block with no rule at all: the proxy then lets no one in (fail closed).
    if domains.is_empty() && access.allowed_emails.is_empty() && !access.allowed_groups.is_empty() {
        domains.push("*".into());
    }
    a.extend(domains.iter().map(|x| format!("--email-domain={x}")));
    a.extend(access.allowed_emails.iter().map(|x| format!("--allowed-email={x}")));
    a.extend(access.allowed_groups.iter().map(|x| format!("--allowed-group={x}")));
    a.extend(access.allowed_tenants.iter().map(|x| format!("--entra-id-allowed-tenant={x}")));
    if let Some(s) = &spec.session {
        a.extend(s.cookie_name.iter().map(|x| format!("--cookie-name={x}")));
        a.extend(s.cookie_domains.iter().map(|x| format!("--cookie-domain={x}")));
        a.extend(s.expire.iter().map(|x| format!("--cookie-expire={x}")));
        a.extend(s.refresh.iter().map(|x| format!("--cookie-refresh={x}")));
        if s.minimal == Some(true) {
            a.push("--session-cookie-minimal=true".into());
        }
        if redis_ref(policy).is_some() {
            a.push("--session-store-type=redis".into());
        }
    }
    if let Some(h) = &spec.headers {
        let flags = [
            ("pass-access-token", h.pass_access_token),
            ("set-authorization-header", h.set_authorization_header),
            ("set-xauthrequest", h.set_xauthrequest),
            ("pass-user-headers", h.pass_user_headers),
        ];
        a.extend(flags.iter().filter_map(|(f, v)| v.map(|v| format!("--{f}={v}"))));
    }
    if let Some(s) = &spec.skip_auth {
        for route in &s.routes {
            if route.methods.is_empty() {
                a.push(format!("--skip-auth-route={}", route.path));
            }
            a.extend(route.methods.iter().map(|m| format!("--skip-auth-route={m}={}", route.path)));
        }
        if s.preflight == Some(true) {
            a.push("--skip-auth-preflight=true".into());
        }
    }
    if let Some(api) = &spec.api {
        a.extend(api.paths.iter().map(|x| format!("--api-route={x}")));
    }
    a.extend(spec.sidecar.iter().flat_map(|s| s.extra_args.iter().cloned()));
    a
}

/// `redirectURL`, else `https://<first route hostname>/oauth2/callback`; without either the
/// proxy derives it from each request's Host.
pub fn redirect_url(policy: &AuthPolicy, hostnames: &[String]) -> Option<String> {
    policy.spec.redirect_url.clone().or_else(|| {
        hostnames
            .iter()
            .find(|h| !h.starts_with('*'))
            .map(|h| format!("https://{h}/oauth2/callback"))
    })
}

fn secret_env(name: &str, r: &SecretKeyRef) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": r.name, "key": r.key}}})
}

/// Tenant id from an Entra issuer such as `https://login.microsoftonline.com/<tenant>/v2.0`.
pub fn entra_tenant(issuer: &str) -> Option<String> {
    let url = url::Url::parse(issuer).ok()?;
    let first = url.path_segments()?.next()?;
    (!first.is_empty()).then(|| first.to_string())
}

fn authority_host(policy: &AuthPolicy) -> Option<String> {
    let p = &policy.spec.provider;
    p.authority_host.clone().or_else(|| {
        let url = url::Url::parse(&p.issuer_url).ok()?;
        // The authority is scheme, host and port: an authority on a non-default port (a
        // sovereign or test authority) is otherwise sent to 443.
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        Some(format!("{}://{}{port}/", url.scheme(), url.host_str()?))
    })
}

pub fn proxy_env(policy: &AuthPolicy) -> Vec<Value> {
    let p = &policy.spec.provider;
    let mut env = vec![secret_env("OAUTH2_PROXY_COOKIE_SECRET", &cookie_secret_ref(policy))];
    if let Some(r) = &p.client_secret_ref {
        env.push(secret_env("OAUTH2_PROXY_CLIENT_SECRET", r));
    }
    if let Some(r) = redis_ref(policy) {
        env.push(secret_env("OAUTH2_PROXY_REDIS_CONNECTION_URL", &r));
    }
    if p.workload_identity.is_some() {
        env.push(json!({"name": "AZURE_FEDERATED_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}));
        env.push(json!({"name": "AZURE_CLIENT_ID", "value": p.client_id}));
        if let Some(t) = entra_tenant(&p.issuer_url) {
            env.push(json!({"name": "AZURE_TENANT_ID", "value": t}));
        }
        if let Some(h) = authority_host(policy) {
            env.push(json!({"name": "AZURE_AUTHORITY_HOST", "value": h}));
        }
    }
    env
}

fn probe(path: &str, period: i32, failures: i32) -> Value {
    json!({
        "httpGet": {"path": path, "port": SIDECAR_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    })
}

fn sidecar_container(policy: &AuthPolicy, w: &Workload, hostnames: &[String], opts: &RenderOptions) -> Value {
    let spec = &policy.spec;
    let sidecar = spec.sidecar.clone().unwrap_or_default();
    let image = sidecar.image.clone().unwrap_or_else(|| opts.proxy_image.clone());
    let resources = match &sidecar.resources {
        Some(r) => serde_json::to_value(r).expect("resources serialize"),
        None => json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}),
    };
    let mut c = json!({
        "name": CONTAINER_NAME,
        "image": image,
        "args": proxy_args(policy, w.upstream_port, hostnames),
        "env": proxy_env(policy),
        "ports": [{"name": SIDECAR_PORT_NAME, "containerPort": spec.sidecar_port(), "protocol": "TCP"}],
        // /ping answers as soon as the process listens, so the app starts right away;
        // /ready stays 503 until the IdP's discovery document is in, so the pod is not
        // Ready (and gets no traffic) while it could not log anyone in.
        "startupProbe": probe("/ping", 1, 30),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/ping", 10, 3),
        "resources": resources,
        // The proxy writes its fatal error to the termination log; a crash it could not
        // report (a panic) still leaves its last log lines there for `kubectl describe`
        // and the policy's SidecarFailing status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    let mut mounts = Vec::new();
    if spec.provider.workload_identity.is_some() {
        mounts.push(json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}));
    }
    if spec.provider.ca_bundle.is_some() {
        mounts.push(json!({"name": PROVIDER_CA_VOLUME, "mountPath": PROVIDER_CA_DIR, "readOnly": true}));
    }
    if !mounts.is_empty() {
        c["volumeMounts"] = Value::Array(mounts);
    }
    if opts.mode == SidecarMode::Native {
        c["restartPolicy"] = json!("Always");
    }
    c
}

/// The server-side-apply body for one Deployment: only the fields sidekey owns.
pub fn deployment_patch(policy: &AuthPolicy, w: &Workload, hostnames: &[String], opts: &RenderOptions, cache: &dyn Cache) -> Value {
    let dkey = ObjKey::of(w.deployment.as_ref());
    let container = sidecar_container(policy, w, hostnames, opts);
    let mut pod_spec = serde_json::Map::new();
    let list = match opts.mode {
        SidecarMode::Native => "initContainers",
        SidecarMode::Regular => "containers",
    };
    pod_spec.insert(list.into(), json!([container]));
    let mut volumes = Vec::new();
    if let Some(wi) = &policy.spec.provider.workload_identity {
        volumes.push(json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": wi.audience.clone().unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
                "expirationSeconds": wi.expiration_seconds.unwrap_or(DEFAULT_TOKEN_EXPIRATION),
                "path": "token",
            }}]},
        }));
    }
    if let Some(ca) = &policy.spec.provider.ca_bundle {
        // Not optional: without the CA the proxy cannot reach the provider, and a pod stuck
        // in ContainerCreating names the missing ConfigMap, which a crash loop would not.
        volumes.push(json!({
            "name": PROVIDER_CA_VOLUME,
            "configMap": {"name": ca.name, "items": [{"key": ca.key, "path": "ca.crt"}]},
        }));
    }
    if !volumes.is_empty() {
        pod_spec.insert("volumes".into(), Value::Array(volumes));
    }
    let pod_spec = Value::Object(pod_spec);
    let hash = config_hash(&pod_spec, policy, &dkey.namespace, cache);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": dkey.name,
            "namespace": dkey.namespace,
            "annotations": {ANNOTATION_POLICY: ObjKey::of(policy).to_string()},
        },
        "spec": {"template": {
            "metadata": {"annotations": {ANNOTATION_CONFIG_HASH: hash}},
            "spec": pod_spec,
        }},
    })
}

/// Changes when the rendered sidecar or any Secret it reads changes, so the pods roll.
fn config_hash(pod_spec: &Value, policy: &AuthPolicy, namespace: &str, cache: &dyn Cache) -> String {
    let mut h = Sha256::new();
    h.update(serde_json::to_vec(pod_spec).expect("json serializes"));
    // The generated cookie secret is ours and never rotates under us; hashing it would roll
    // the pods a second time right after it is created.
    let generated = generated_cookie_secret_name(policy);
    let user_owned = !uses_generated_cookie_secret(policy);
    for r in secret_refs(policy).into_iter().filter(|r| user_owned || r.name != generated) {
        let digest = cache.secret_digest(&ObjKey::new(namespace, &r.name)).unwrap_or_default();
        h.update(format!("\0{}\0{}\0{digest}", r.name, r.key));
    }
    let out = h.finalize();
    out.iter().take(10).map(|b| format!("{b:02x}")).collect()
}

/// The server-side-apply body for each Service: routed ports retargeted to the sidecar, the
/// original targets remembered so they can be restored.
pub fn service_patches<'a>(policy: &AuthPolicy, workloads: impl IntoIterator<Item = &'a Workload>) -> BTreeMap<ObjKey, Value> {
    let mut ports: BTreeMap<ObjKey, BTreeMap<(i32, String), String>> = BTreeMap::new();
    for w in workloads {
        for b in &w.bindings {
            ports
                .entry(b.service.clone())
                .or_default()
                .insert((b.port, b.protocol.clone()), b.original_target.clone());
        }
    }
    ports
        .into_iter()
        .map(|(key, ports)| {
            let originals: BTreeMap<String, &String> = ports.iter().map(|((p, proto), orig)| (port_key(*p, proto), orig)).collect();
            let patch = json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": key.name,
                    "namespace": key.namespace,
                    "annotations": {
                        ANNOTATION_POLICY: ObjKey::of(policy).to_string(),
                        ANNOTATION_ORIGINAL_PORTS: serde_json::to_string(&originals).expect("json serializes"),
                    },
                },
                "spec": {"ports": ports.keys().map(|(p, proto)| json!({"port": p, "protocol": proto, "targetPort": SIDECAR_PORT_NAME})).collect::<Vec<_>>()},
            });
            (key, patch)
        })
        .collect()
}

/// The apply body that restores a Service: each remembered targetPort put back. Applying it
/// with our manager and then nothing else leaves the original values in place.
pub fn service_restore_patch(key: &ObjKey, originals: &BTreeMap<String, String>) -> Value {
    let ports: Vec<Value> = originals
        .iter()
        .filter_map(|(k, target)| {
            let (port, proto) = k.split_once('/')?;
            let port: i32 = port.parse().ok()?;
            let target = target
                .parse::<i32>()
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(target.clone()));
            Some(json!({"port": port, "protocol": proto, "targetPort": target}))
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": key.name, "namespace": key.namespace},
        "spec": {"ports": ports},
    })
}

/// An apply body with no fields: applying it with our manager releases everything we own.
pub fn release_patch(api_version: &str, kind: &str, key: &ObjKey) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": key.name, "namespace": key.namespace}})
}

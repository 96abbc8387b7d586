//! The `AuthPolicy` API (`sidekey.dev/v1alpha1`).
//!
//! The schema (and its CEL rules) is generated from these types by `crdgen`; whatever the
//! API server cannot check (regex syntax, flag clashes in `extraArgs`) the controller checks
//! in [`crate::validate`] and reports in a status condition.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "sidekey.dev";
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";
pub const DEFAULT_TOKEN_EXPIRATION: i64 = 3600;
pub const DEFAULT_SIDECAR_PORT: i32 = 4180;

/// Go duration syntax as both the proxy and oauth2-proxy parse it (`168h`, `1h30m`, `90s`).
const DURATION_RULE: &str = r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$')";
/// https anywhere; http only for a loopback host, which is only reachable in tests and demos.
const URL_RULE: &str =
    r"isURL(self) && (self.startsWith('https://') || self.matches('^http://(localhost|127\\.0\\.0\\.1|\\[::1\\])(:[0-9]+)?(/.*)?$'))";
/// A plain-http callback is what the proxy derives for a browser that came over http, so it
/// may be set explicitly too, on the terms the proxy needs for it to work: browsers keep
/// Secure cookies only over https and on loopback names, so elsewhere the policy must turn
/// them off (a lab, a port-forward to a ClusterIP).
const HTTP_REDIRECT_RULE: &str = r"!has(self.redirectURL) || !self.redirectURL.startsWith('http://') || self.redirectURL.matches('^http://(localhost|127\\.0\\.0\\.1|\\[::1\\])(:[0-9]+)?(/.*)?$') || (has(self.sidecar) && has(self.sidecar.extraArgs) && self.sidecar.extraArgs.exists(a, a == '--cookie-secure=false'))";

/// Puts single sign-on in front of the workloads behind the target routes or Services.
// Several `printcolumn(...)` entries share keys such as `type_`, which this lint misreads.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sidekey.dev",
    version = "v1alpha1",
    kind = "AuthPolicy",
    doc = "Puts single sign-on (sidekey-proxy as a native sidecar) in front of the workloads behind HTTPRoutes or Services.",
    namespaced,
    status = "AuthPolicyStatus",
    shortname = "ap",
    category = "sidekey",
    label("gateway.networking.k8s.io/policy", "Inherited"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Targets",
        type_ = "integer",
        json_path = ".status.targetCount",
        description = "Routes and Services the policy names"
    ),
    printcolumn(
        name = "Protected",
        type_ = "integer",
        json_path = ".status.protected",
        description = "Deployments running the sidekey-proxy sidecar"
    ),
    printcolumn(
        name = "Subjects",
        type_ = "string",
        json_path = ".status.workloadIdentity.subjects",
        priority = 1,
        description = "Federated-credential subjects to register in Entra ID"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(HTTP_REDIRECT_RULE).message("an http:// redirectURL outside localhost needs --cookie-secure=false in sidecar.extraArgs: browsers drop Secure cookies over plain http (or use https)"))]
pub struct AuthPolicySpec {
    /// The HTTPRoutes (Gateway API) or core Services whose workloads get the proxy.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    pub provider: Provider,
    /// The OAuth callback URL registered with the IdP. Default: `https://<first route hostname>/oauth2/callback`.
    #[serde(default, rename = "redirectURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && (self.startsWith('https://') || self.startsWith('http://'))").message("redirectURL must be an https:// (or http://) URL"))]
    pub redirect_url: Option<String>,
    /// Who may sign in. At least one rule: an empty access block would let no one in.
    pub access: Access,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Session>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_auth: Option<SkipAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiRoutes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<Sidecar>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.group == 'gateway.networking.k8s.io' && self.kind == 'HTTPRoute') || (self.group == '' && self.kind == 'Service')").message("targetRefs[] must be {group: gateway.networking.k8s.io, kind: HTTPRoute} or {group: \"\", kind: Service}"))]
pub struct TargetRef {
    /// `gateway.networking.k8s.io` for an HTTPRoute, `""` for a core Service.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub group: String,
    #[schemars(length(max = 63))]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Only this rule (HTTPRoute rule name) or port (Service port name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.workloadIdentity) != has(self.clientSecretRef)").message("set exactly one of provider.workloadIdentity (no secret; Entra ID workload identity federation) or provider.clientSecretRef"))]
#[x_kube(validation = Rule::new("!has(self.workloadIdentity) || self.type == 'entra-id'").message("provider.workloadIdentity needs provider.type: entra-id"))]
#[x_kube(validation = Rule::new("!has(self.graphURL) || self.type == 'entra-id'").message("provider.graphURL needs provider.type: entra-id"))]
pub struct Provider {
    #[serde(rename = "type")]
    pub type_: ProviderType,
    /// e.g. `https://login.microsoftonline.com/<tenant-id>/v2.0`.
    #[serde(rename = "issuerURL")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message("issuerURL must be an https:// URL (http:// only for localhost)"))]
    pub issuer_url: String,
    #[serde(rename = "clientID")]
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// Default: `openid email profile`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub scopes: Vec<String>,
    /// Log in with the pod's projected service-account token instead of a client secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// Further accepted ID-token audiences besides clientID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 512)))]
    pub extra_audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
    /// Entra ID authority for sovereign clouds, e.g. `https://login.microsoftonline.us/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message("authorityHost must be an https:// URL"))]
    pub authority_host: Option<String>,
    /// Microsoft Graph for an `entra-id` provider outside Microsoft's public cloud (read only
    /// for groups overage), e.g. `https://graph.microsoft.us`; by default the one that
    /// belongs to the issuer's cloud.
    #[serde(default, rename = "graphURL", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new(URL_RULE).message("graphURL must be an https:// URL"))]
    pub graph_url: Option<String>,
    /// CA certificates (PEM) to trust for the provider's TLS besides the public web roots,
    /// for a provider behind a private CA: a key of a ConfigMap in the workload's namespace
    /// (every namespace has `kube-root-ca.crt`, key `ca.crt`, the cluster's own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<ConfigMapKeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ProviderType {
    #[serde(rename = "entra-id")]
    EntraId,
    #[serde(rename = "oidc")]
    Oidc,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentity {
    /// Default `api://AzureADTokenExchange` (Entra ID's federated-credential audience).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,
    /// Lifetime of the projected token. Default 3600; the kubelet refreshes it at 80%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 600 && self <= 86400").message("workloadIdentity.expirationSeconds must be between 600 (the Kubernetes minimum) and 86400"))]
    pub expiration_seconds: Option<i64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKeyRef {
    /// A Secret in the namespace of the protected workload.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigMapKeyRef {
    /// A ConfigMap in the namespace of the protected workload.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Claim holding the email address (default `email`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub email: Option<String>,
    /// Claim naming the user: `oid`, `upn`, `preferred_username`, `email`, `sub`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub user: Option<String>,
    /// Claim holding group ids (default `groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub groups: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.emailDomains) + size(self.allowedEmails) + size(self.allowedGroups) > 0").message("access needs at least one rule (emailDomains, allowedEmails or allowedGroups): with none, no one could sign in"))]
pub struct Access {
    /// `example.com`, or `*` for any (then restrict with allowedGroups).
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub email_domains: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 3, max = 320)))]
    pub allowed_emails: Vec<String>,
    /// Group object ids (Entra ID) or names, any one suffices.
    #[serde(default)]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub allowed_groups: Vec<String>,
    /// Entra ID tenants allowed to sign in (multi-tenant apps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub allowed_tenants: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Default: a random 32-byte Secret the controller creates and owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_secret_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[!#$%&\\'*+\\\\-.^_`|~0-9A-Za-z]+$')").message("cookieName must be a valid cookie name token"))]
    pub cookie_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub cookie_domains: Vec<String>,
    /// Session lifetime, Go duration (default `168h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("session.expire must be a duration such as 168h or 30m"))]
    pub expire: Option<String>,
    /// Refresh tokens after this age, Go duration (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("session.refresh must be a duration such as 1h or 30m"))]
    pub refresh: Option<String>,
    /// Keep only what authorization needs in the cookie (no tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<SessionStore>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'redis' || has(self.redis)").message("session.store.type redis needs session.store.redis.urlSecretRef"))]
pub struct SessionStore {
    #[serde(rename = "type")]
    pub type_: StoreType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStore>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreType {
    Cookie,
    Redis,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisStore {
    /// Secret key holding the `redis://` or `rediss://` URL (it may carry a password).
    pub url_secret_ref: SecretKeyRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    /// `X-Forwarded-Access-Token` to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_access_token: Option<bool>,
    /// `Authorization: Bearer <id token>` to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_authorization_header: Option<bool>,
    #[serde(default, rename = "setXAuthRequest", skip_serializing_if = "Option::is_none")]
    pub set_xauthrequest: Option<bool>,
    /// `X-Forwarded-User`/`-Email`/`-Groups` to the app (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_user_headers: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SkipAuth {
    /// Requests that need no login. Paths are regexes matched against the normalised path.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub routes: Vec<SkipAuthRoute>,
    /// Let CORS preflight (OPTIONS) requests through unauthenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkipAuthRoute {
    /// Regex, e.g. `^/healthz$`. Anchor it: an unanchored regex matches anywhere in the path.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// Only these methods (any method when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32)))]
    #[x_kube(validation = Rule::new("self.all(m, m.matches('^[A-Z]+$'))").message("skipAuth methods are upper-case HTTP methods such as GET"))]
    pub methods: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApiRoutes {
    /// Path regexes answered with 401 instead of a login redirect; bearer JWTs are accepted there.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 1024)))]
    pub paths: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    /// Default: the controller's `--proxy-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,
    /// Port the sidecar listens on (default 4180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1024 && self <= 65535").message("sidecar.port must be between 1024 and 65535 (the sidecar runs as non-root)"))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// More sidekey-proxy flags, e.g. `--cookie-samesite=strict`. Flags the controller renders are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 3, max = 1024)))]
    #[x_kube(validation = Rule::new("self.all(a, a.startsWith('--'))").message("sidecar.extraArgs entries must be flags such as --cookie-samesite=strict"))]
    pub extra_args: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Number of targetRefs.
    #[serde(default)]
    pub target_count: i32,
    /// Number of Deployments running the sidecar.
    #[serde(default)]
    pub protected: i32,
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    pub state: TargetState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, schemars::JsonSchema)]
pub enum TargetState {
    /// The sidecar runs and the Service sends traffic through it.
    Protected,
    /// Patched; waiting for the rollout before the Service is switched over.
    #[default]
    Pending,
    NotFound,
    RefNotPermitted,
    Conflicted,
    Unsupported,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentityStatus {
    /// Register each as a federated credential subject on the Entra app registration.
    pub subjects: Vec<String>,
    pub audience: String,
    /// The issuer to register: the cluster's service-account issuer, as its OIDC discovery
    /// document (`/.well-known/openid-configuration`) gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Where to find the issuer, when the controller could not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_hint: Option<String>,
}

impl AuthPolicySpec {
    pub fn sidecar_port(&self) -> i32 {
        self.sidecar.as_ref().and_then(|s| s.port).unwrap_or(DEFAULT_SIDECAR_PORT)
    }
}

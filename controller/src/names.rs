//! Every name sidekey writes into objects it does not own, in one leaf module: the field
//! manager, the finalizer, our annotations and labels, and the sidecar's container, port and
//! volume names. The modules that write them and the ones that read them back (the cache,
//! pod state, clean-up) import them from here, so no layer reaches up for a constant.

/// Server-side apply field manager: every field sidekey sets is owned under this name.
pub const FIELD_MANAGER: &str = "sidekey-controller";

/// Held on a policy until its Deployments and Services are put back.
pub const FINALIZER: &str = "sidekey.dev/cleanup";

/// Annotations under this prefix are sidekey's.
pub const ANNOTATION_PREFIX: &str = "sidekey.dev/";
/// On patched objects and the cookie Secret: the policy (`namespace/name`) that owns
/// sidekey's fields.
pub const ANNOTATION_POLICY: &str = "sidekey.dev/policy";
/// On the pod template: a hash of everything the sidecar reads, so a change rolls the pods.
pub const ANNOTATION_CONFIG_HASH: &str = "sidekey.dev/config-hash";
/// On a retargeted Service: `{"<port>/<protocol>": <original targetPort>}`.
pub const ANNOTATION_ORIGINAL_PORTS: &str = "sidekey.dev/original-target-ports";
/// On a Service we switched: how often someone put its targetPort back, and since when
/// (JSON `{"count": n, "since": "<RFC 3339>"}`). Kept on the object, so a restarted
/// controller still knows it is in a fight.
pub const ANNOTATION_REVERTS: &str = "sidekey.dev/reverts";
/// On the generated cookie Secret: the policy's name, for `kubectl get -l`.
pub const LABEL_POLICY_NAME: &str = "sidekey.dev/policy-name";

/// The sidecar (a native sidecar: an init container with `restartPolicy: Always`).
pub const CONTAINER_NAME: &str = "sidekey-proxy";
/// The sidecar's container port name; retargeted Services point at it.
pub const SIDECAR_PORT_NAME: &str = "sidekey-http";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "sidekey-token";
/// Our own path: never the Azure webhook's `azure-identity-token` volume or its mount path.
pub const TOKEN_DIR: &str = "/var/run/secrets/sidekey/serviceaccount";
/// The provider CA bundle (`provider.caBundle`), mounted read-only into the sidecar.
pub const PROVIDER_CA_VOLUME: &str = "sidekey-provider-ca";
pub const PROVIDER_CA_DIR: &str = "/etc/sidekey/provider-ca";
/// The key of the generated cookie Secret that holds the cookie secret.
pub const COOKIE_SECRET_KEY: &str = "cookie-secret";

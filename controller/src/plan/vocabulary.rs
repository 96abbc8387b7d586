//! The words a policy's status and events use: condition types, event reasons and the
//! conditions' reasons, as `kubectl describe` and Argo CD's health check read them.

/// The status condition types: `Accepted` (the spec and its targets) and `Ready` (protection
/// in place).
pub mod condition {
    pub const ACCEPTED: &str = "Accepted";
    pub const READY: &str = "Ready";
}

/// The reasons of the events sidekey records on a policy.
pub mod event {
    pub const INJECTED: &str = "Injected";
    pub const REMOVED: &str = "Removed";
    pub const REGULAR_SIDECAR: &str = "RegularSidecar";
}

/// The conditions' reasons.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const INVALID: &str = "Invalid";
    pub const TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const CONFLICTED: &str = "Conflicted";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const READY: &str = "Ready";
    pub const ROLLOUT_PENDING: &str = "RolloutPending";
    pub const TARGETS_NOT_READY: &str = "TargetsNotReady";
    pub const SERVICE_REVERTED: &str = "ServiceReverted";
    pub const SIDECAR_FAILING: &str = "SidecarFailing";
}

//! Reading a JWT without verifying it, for the callers that verified it first (the OIDC
//! layer) or only describe it (the client assertion's expiry, a bearer token's issuer). A
//! leaf: the credential and provider modules share it without depending on each other.

use base64::Engine;

/// A JWT's payload, NOT verified: callers either verified the signature first or only use it
/// to describe the token.
pub fn decode_payload(raw: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let payload = raw.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

//! Seals values into compact, authenticated, encrypted cookie values.
//!
//! Wire format (base64url, no padding): `version (1) || nonce (12) || AES-256-GCM(ciphertext || tag)`.
//! The plaintext is postcard-encoded and lz4-compressed (tokens compress well and cookies are
//! small). The cookie's base name and the version are authenticated as associated data, so a
//! value cannot be moved to another cookie. Keys are derived with HKDF-SHA256 from the cookie
//! secret, one per purpose, so a CSRF value can never be replayed as a session.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// 2: sessions carry `refreshed_at` and `groups_from_graph`. Older values read as no session.
const VERSION: u8 = 2;
const NONCE_LEN: usize = 12;
/// Refuse to decompress more than this, even from an authenticated value.
const MAX_PLAINTEXT: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("cookie value is not base64url")]
    Encoding,
    #[error("cookie value is too short")]
    Truncated,
    #[error("unsupported cookie version {0}")]
    Version(u8),
    #[error("cookie failed authentication (tampered, or sealed with another secret)")]
    Authentication,
    #[error("cookie payload does not decode")]
    Payload,
}

/// What a sealed value is for; each purpose has its own key.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    Session,
    Csrf,
    /// A Redis session ticket (id and per-session key) in the session cookie.
    Ticket,
}

pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    pub fn new(cookie_secret: &[u8], purpose: Purpose) -> Self {
        let info: &[u8] = match purpose {
            Purpose::Session => b"sidekey session v1",
            Purpose::Csrf => b"sidekey csrf v1",
            Purpose::Ticket => b"sidekey ticket v1",
        };
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"sidekey cookie key"), cookie_secret);
        let mut key = [0u8; 32];
        hk.expand(info, &mut key).expect("32 bytes is a valid HKDF-SHA256 output length");
        Sealer {
            cipher: Aes256Gcm::new(&key.into()),
        }
    }

    pub fn seal<T: Serialize>(&self, name: &str, value: &T) -> String {
        let encoded = postcard::to_stdvec(value).expect("session types always serialize");
        let compressed = lz4_flex::compress_prepend_size(&encoded);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(name);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &compressed,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        URL_SAFE_NO_PAD.encode(out)
    }

    pub fn open<T: DeserializeOwned>(&self, name: &str, sealed: &str) -> Result<T, CodecError> {
        let raw = URL_SAFE_NO_PAD.decode(sealed.trim()).map_err(|_| CodecError::Encoding)?;
        let (&version, rest) = raw.split_first().ok_or(CodecError::Truncated)?;
        if version != VERSION {
            return Err(CodecError::Version(version));
        }
        if rest.len() < NONCE_LEN + 16 {
            return Err(CodecError::Truncated);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let aad = associated_data(name);
        let compressed = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| CodecError::Authentication)?;
        let size = compressed
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
        if size.is_none_or(|s| s > MAX_PLAINTEXT) {
            return Err(CodecError::Payload);
        }
        let encoded = lz4_flex::decompress_size_prepended(&compressed).map_err(|_| CodecError::Payload)?;
        postcard::from_bytes(&encoded).map_err(|_| CodecError::Payload)
    }
}

fn associated_data(name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + name.len());
    aad.push(VERSION);
    aad.extend_from_slice(name.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;

    fn mk_session() -> Session {
        Session {
            user: "alice".into(),
            email: "alice@example.com".into(),
            preferred_username: "alice".into(),
            groups: vec!["admins".into(), "devs".into()],
            created_at: 1_700_000_000,
            expires_at: 1_700_604_800,
            access_token: Some("at".repeat(400).into()),
            id_token: Some("eyJ".repeat(300).into()),
            refresh_token: None,
            tokens_expire_at: Some(1_700_003_600),
            refreshed_at: 1_700_000_000,
            groups_from_graph: false,
        }
    }

    #[test]
    fn round_trips() {
        let s = Sealer::new(b"0123456789abcdef0123456789abcdef", Purpose::Session);
        let sealed = s.seal("_oauth2_proxy", &mk_session());
        assert_eq!(s.open::<Session>("_oauth2_proxy", &sealed), Ok(mk_session()));
    }

    #[test]
    fn values_are_randomised() {
        let s = Sealer::new(b"0123456789abcdef", Purpose::Session);
        assert_ne!(s.seal("n", &mk_session()), s.seal("n", &mk_session()));
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let s = Sealer::new(b"0123456789abcdef", Purpose::Session);
        let mut sess = mk_session();
        sess.access_token = None;
        sess.id_token = None;
        let sealed = s.seal("n", &sess);
        let raw = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for i in 0..raw.len() {
            for bit in 0..8 {
                let mut t = raw.clone();
                t[i] ^= 1 << bit;
                assert!(
                    s.open::<Session>("n", &URL_SAFE_NO_PAD.encode(&t)).is_err(),
                    "flip at {i}:{bit} accepted"
                );
            }
        }
    }

    #[test]
    fn truncation_other_secret_other_name_and_other_purpose_are_rejected() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let s = Sealer::new(secret, Purpose::Session);
        let sealed = s.seal("n", &mk_session());
        for cut in [0, 1, 5, 20, sealed.len() / 2, sealed.len() - 1] {
            assert!(s.open::<Session>("n", &sealed[..cut]).is_err(), "truncated to {cut} accepted");
        }
        assert_eq!(
            Sealer::new(b"another secret, 32 bytes long!!!", Purpose::Session).open::<Session>("n", &sealed),
            Err(CodecError::Authentication)
        );
        assert_eq!(s.open::<Session>("other", &sealed), Err(CodecError::Authentication));
        assert_eq!(
            Sealer::new(secret, Purpose::Csrf).open::<Session>("n", &sealed),
            Err(CodecError::Authentication)
        );
        assert_eq!(s.open::<Session>("n", "not base64!"), Err(CodecError::Encoding));
        assert_eq!(s.open::<Session>("n", ""), Err(CodecError::Truncated));
    }

    #[test]
    fn compact() {
        let s = Sealer::new(b"0123456789abcdef", Purpose::Session);
        let mut sess = mk_session();
        sess.access_token = None;
        sess.id_token = None;
        // user, email, groups and times: well under 200 bytes of cookie.
        assert!(s.seal("n", &sess).len() < 200, "{}", s.seal("n", &sess).len());
    }
}

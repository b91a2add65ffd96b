//! Session tokens: signed, not stored.
//!
//! A token is `ias2_` + base64url(key id ‖ agent id ‖ session generation ‖ expiry ‖ nonce ‖
//! HMAC-SHA256). The exchange issues one without touching the database (its only round trip is
//! the candidate lookup); the agent API checks the MAC in constant time and the expiry, then
//! requires the agent to be live, in the latest build of a live workspace, and at the signed
//! generation. So deleting a workspace, a new build, or revoking the agent's sessions (bumping
//! the generation) ends every token issued before.
//!
//! The keys live in the database (`session_keys`), shared by all replicas. The newest signs;
//! `instauth keys rotate` adds a newer one, and a retired key keeps verifying the tokens it signed
//! until they expire, after which it is deleted. A replica that meets a token naming a key it
//! does not know yet (rotated by another process) reloads the keys, at most once a second.
//! Tokens of the first format (`ias1_`, no key id) were signed by key 1 and verify with it.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use instauth_store::SessionKey;
use rand::RngCore;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

/// Prefix of session tokens; static agent tokens never start with it.
pub const SESSION_TOKEN_PREFIX: &str = "ias2_";
/// Prefix of tokens issued before keys had ids; they verify with key 1 until they expire.
pub const LEGACY_TOKEN_PREFIX: &str = "ias1_";
const CLAIMS_LEN: usize = 16 + 4 + 8 + 16;
const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 32;
/// Domain separation: the keys sign nothing else.
const CONTEXT: &[u8] = b"instauth session v1\0";
/// Longest token text looked at (a real one is about 100 characters).
const MAX_TOKEN_LEN: usize = 160;

/// What a valid session token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClaims {
    /// The agent.
    pub agent_id: Uuid,
    /// The agent's session generation when the token was issued.
    pub generation: i32,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The key that signed it.
    pub key_id: i32,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, forged, or expired.
    Invalid,
    /// Well-formed but signed by a key this process does not know (yet).
    UnknownKey(i32),
}

struct Keyring {
    signing_id: i32,
    signing: hmac::Key,
    keys: HashMap<i32, hmac::Key>,
}

/// Issues and checks session tokens with the current keys.
pub struct SessionSigner {
    keys: ArcSwap<Keyring>,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSigner")
            .field("signing_key", &self.keys.load().signing_id)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes from the operating system.
pub fn random_secret() -> Vec<u8> {
    let mut b = vec![0u8; 32];
    // SystemRandom only fails if the OS has no entropy source, which ring treats as fatal too.
    if SystemRandom::new().fill(&mut b).is_err() {
        panic!("the operating system's random number generator failed");
    }
    b
}

/// The keyring of `keys`; the newest signs. `None` when there is no key at all.
fn keyring(keys: &[SessionKey]) -> Option<Keyring> {
    let newest = keys.iter().max_by_key(|k| k.id)?;
    Some(Keyring {
        signing_id: newest.id,
        signing: hmac::Key::new(hmac::HMAC_SHA256, &newest.secret),
        keys: keys
            .iter()
            .map(|k| (k.id, hmac::Key::new(hmac::HMAC_SHA256, &k.secret)))
            .collect(),
    })
}

impl SessionSigner {
    /// A signer over `keys` (as [`instauth_store::Store::session_keys`] returns them, never
    /// empty); `None` when `keys` is empty.
    pub fn new(keys: &[SessionKey]) -> Option<Self> {
        Some(SessionSigner {
            keys: ArcSwap::from_pointee(keyring(keys)?),
        })
    }

    /// Replaces the keys (after a rotation or when retired keys were dropped); an empty list is
    /// ignored.
    pub fn reload(&self, keys: &[SessionKey]) {
        if let Some(ring) = keyring(keys) {
            self.keys.store(Arc::new(ring));
        }
    }

    /// The id of the key that signs new tokens.
    pub fn signing_key_id(&self) -> i32 {
        self.keys.load().signing_id
    }

    fn tag(key: &hmac::Key, claims: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(CONTEXT);
        ctx.update(claims);
        ctx.sign()
    }

    /// A new token for `agent_id` at `generation`, valid until `expires_at`.
    pub fn issue(&self, agent_id: Uuid, generation: i32, expires_at: DateTime<Utc>) -> String {
        let ring = self.keys.load();
        let mut buf = [0u8; KEY_ID_LEN + CLAIMS_LEN + TAG_LEN];
        buf[..KEY_ID_LEN].copy_from_slice(&ring.signing_id.to_be_bytes());
        let claims = &mut buf[KEY_ID_LEN..KEY_ID_LEN + CLAIMS_LEN];
        claims[..16].copy_from_slice(agent_id.as_bytes());
        claims[16..20].copy_from_slice(&generation.to_be_bytes());
        claims[20..28].copy_from_slice(&expires_at.timestamp().to_be_bytes());
        // The nonce only keeps two tokens of the same second apart (the MAC makes them
        // authentic): the thread's CSPRNG (ChaCha, seeded and reseeded by the OS) draws it
        // without the system call per token that the OS generator costs.
        rand::thread_rng().fill_bytes(&mut claims[28..44]);
        let tag = Self::tag(&ring.signing, &buf[KEY_ID_LEN..KEY_ID_LEN + CLAIMS_LEN]);
        buf[KEY_ID_LEN + CLAIMS_LEN..].copy_from_slice(tag.as_ref());
        let mut out = String::with_capacity(SESSION_TOKEN_PREFIX.len() + 107);
        out.push_str(SESSION_TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(buf, &mut out);
        out
    }

    /// The claims of `token` if a known key's MAC is valid (checked in constant time) and it has
    /// not expired at `now`.
    pub fn check(&self, token: &str, now: DateTime<Utc>) -> Result<SessionClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let mut raw = [0u8; KEY_ID_LEN + CLAIMS_LEN + TAG_LEN];
        let (key_id, signed) = if let Some(body) = token.strip_prefix(SESSION_TOKEN_PREFIX) {
            let n = URL_SAFE_NO_PAD
                .decode_slice(body, &mut raw)
                .map_err(|_| TokenError::Invalid)?;
            if n != raw.len() {
                return Err(TokenError::Invalid);
            }
            let id = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            (id, &raw[KEY_ID_LEN..])
        } else if let Some(body) = token.strip_prefix(LEGACY_TOKEN_PREFIX) {
            let n = URL_SAFE_NO_PAD
                .decode_slice(body, &mut raw[KEY_ID_LEN..])
                .map_err(|_| TokenError::Invalid)?;
            if n != CLAIMS_LEN + TAG_LEN {
                return Err(TokenError::Invalid);
            }
            (1, &raw[KEY_ID_LEN..])
        } else {
            return Err(TokenError::Invalid);
        };
        let (claims, tag) = signed.split_at(CLAIMS_LEN);
        let ring = self.keys.load();
        let key = ring
            .keys
            .get(&key_id)
            .ok_or(TokenError::UnknownKey(key_id))?;
        let mut input = [0u8; CONTEXT.len() + CLAIMS_LEN];
        input[..CONTEXT.len()].copy_from_slice(CONTEXT);
        input[CONTEXT.len()..].copy_from_slice(claims);
        hmac::verify(key, &input, tag).map_err(|_| TokenError::Invalid)?;
        let agent_id = Uuid::from_slice(&claims[..16]).map_err(|_| TokenError::Invalid)?;
        let generation = i32::from_be_bytes([claims[16], claims[17], claims[18], claims[19]]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&claims[20..28]);
        let expires_at = DateTime::<Utc>::from_timestamp(i64::from_be_bytes(exp), 0)
            .ok_or(TokenError::Invalid)?;
        if expires_at <= now {
            return Err(TokenError::Invalid);
        }
        Ok(SessionClaims {
            agent_id,
            generation,
            expires_at,
            key_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn key(id: i32, byte: u8) -> SessionKey {
        SessionKey {
            id,
            secret: vec![byte; 32],
            created_at: chrono::NaiveDateTime::default(),
            retired_at: None,
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let s = SessionSigner::new(&[key(1, 7)]).unwrap();
        let id = Uuid::new_v4();
        let now = Utc::now();
        let t = s.issue(id, 3, now + Duration::hours(1));
        assert!(t.starts_with("ias2_") && t.len() < MAX_TOKEN_LEN, "{t}");
        let c = s.check(&t, now).unwrap();
        assert_eq!((c.agent_id, c.generation, c.key_id), (id, 3, 1));
        assert_ne!(t, s.issue(id, 3, now + Duration::hours(1)), "nonce");
        assert_eq!(
            s.check(&t, now + Duration::hours(2)),
            Err(TokenError::Invalid)
        );
        let other = SessionSigner::new(&[key(1, 8)]).unwrap();
        assert_eq!(
            other.check(&t, now),
            Err(TokenError::Invalid),
            "other secret"
        );
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 10;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(s.check(&String::from_utf8(bad).unwrap(), now).is_err());
        for junk in ["ias2_", "ias2_!!!", "ias1_", &t[5..], &format!("{t}AAAA")] {
            assert_eq!(s.check(junk, now), Err(TokenError::Invalid), "{junk}");
        }
    }

    #[test]
    fn rotation_keeps_old_tokens_until_their_key_is_dropped() {
        let s = SessionSigner::new(&[key(1, 7)]).unwrap();
        let now = Utc::now();
        let old = s.issue(Uuid::new_v4(), 0, now + Duration::hours(1));
        s.reload(&[key(2, 9), key(1, 7)]);
        assert_eq!(s.signing_key_id(), 2);
        let new = s.issue(Uuid::new_v4(), 0, now + Duration::hours(1));
        assert_eq!(s.check(&old, now).unwrap().key_id, 1);
        assert_eq!(s.check(&new, now).unwrap().key_id, 2);
        s.reload(&[key(2, 9)]);
        assert_eq!(s.check(&old, now), Err(TokenError::UnknownKey(1)));
        let stale = SessionSigner::new(&[key(1, 7)]).unwrap();
        assert_eq!(stale.check(&new, now), Err(TokenError::UnknownKey(2)));
    }

    #[test]
    fn legacy_tokens_verify_with_key_one() {
        // An `ias1_` token: base64url(claims ‖ HMAC) under key 1's secret.
        let secret = [7u8; 32];
        let k = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let id = Uuid::new_v4();
        let now = Utc::now();
        let mut claims = Vec::new();
        claims.extend_from_slice(id.as_bytes());
        claims.extend_from_slice(&5i32.to_be_bytes());
        claims.extend_from_slice(&(now + Duration::hours(1)).timestamp().to_be_bytes());
        claims.extend_from_slice(&[0u8; 16]);
        let tag = SessionSigner::tag(&k, &claims);
        claims.extend_from_slice(tag.as_ref());
        let legacy = format!("ias1_{}", URL_SAFE_NO_PAD.encode(&claims));
        let s = SessionSigner::new(&[key(2, 9), key(1, 7)]).unwrap();
        let c = s.check(&legacy, now).unwrap();
        assert_eq!((c.agent_id, c.generation, c.key_id), (id, 5, 1));
        assert_eq!(
            SessionSigner::new(&[key(2, 9)])
                .unwrap()
                .check(&legacy, now),
            Err(TokenError::UnknownKey(1))
        );
    }
}

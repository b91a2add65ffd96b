//! Session tokens: signed, not stored.
//!
//! A token is `ias1_` + base64url(agent id ‖ session generation ‖ expiry ‖ nonce ‖ HMAC-SHA256).
//! The exchange issues one without touching the database (its only round trip is the candidate
//! lookup); the agent API checks the MAC in constant time, the expiry, then reads the agent by
//! primary key, requiring it to be live, in the latest build of a live workspace, and at the
//! signed generation. So deleting a workspace, a new build, or revoking the agent's sessions
//! (bumping the generation) ends every token issued before. The key lives in the database
//! (`server_keys`), shared by all replicas.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

/// Prefix of session tokens; static agent tokens never start with it.
pub const SESSION_TOKEN_PREFIX: &str = "ias1_";
const PAYLOAD_LEN: usize = 16 + 4 + 8 + 16;
const TAG_LEN: usize = 32;
/// Domain separation: the key signs nothing else.
const CONTEXT: &[u8] = b"instauth session v1\0";

/// What a valid session token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionClaims {
    /// The agent.
    pub agent_id: Uuid,
    /// The agent's session generation when the token was issued.
    pub generation: i32,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// Issues and checks session tokens with one key.
pub struct SessionSigner {
    key: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionSigner(..)")
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

impl SessionSigner {
    /// A signer with a secret of at least 32 bytes.
    pub fn new(secret: &[u8]) -> Self {
        SessionSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            rng: SystemRandom::new(),
        }
    }

    fn tag(&self, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(payload);
        ctx.sign()
    }

    /// A new token for `agent_id` at `generation`, valid until `expires_at`.
    pub fn issue(&self, agent_id: Uuid, generation: i32, expires_at: DateTime<Utc>) -> String {
        let mut buf = Vec::with_capacity(PAYLOAD_LEN + TAG_LEN);
        buf.extend_from_slice(agent_id.as_bytes());
        buf.extend_from_slice(&generation.to_be_bytes());
        buf.extend_from_slice(&expires_at.timestamp().to_be_bytes());
        let mut nonce = [0u8; 16];
        // A failed nonce only makes two tokens of the same second equal; still valid and safe.
        let _ = self.rng.fill(&mut nonce);
        buf.extend_from_slice(&nonce);
        let tag = self.tag(&buf);
        buf.extend_from_slice(tag.as_ref());
        format!("{SESSION_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(buf))
    }

    /// The claims of `token` if its MAC is valid (checked in constant time) and it has not
    /// expired at `now`.
    pub fn check(&self, token: &str, now: DateTime<Utc>) -> Option<SessionClaims> {
        let body = token.strip_prefix(SESSION_TOKEN_PREFIX)?;
        if body.len() > 128 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
        if raw.len() != PAYLOAD_LEN + TAG_LEN {
            return None;
        }
        let (payload, tag) = raw.split_at(PAYLOAD_LEN);
        let mut ctx_input = Vec::with_capacity(CONTEXT.len() + PAYLOAD_LEN);
        ctx_input.extend_from_slice(CONTEXT);
        ctx_input.extend_from_slice(payload);
        hmac::verify(&self.key, &ctx_input, tag).ok()?;
        let agent_id = Uuid::from_slice(payload.get(0..16)?).ok()?;
        let generation = i32::from_be_bytes(payload.get(16..20)?.try_into().ok()?);
        let exp = i64::from_be_bytes(payload.get(20..28)?.try_into().ok()?);
        let expires_at = DateTime::<Utc>::from_timestamp(exp, 0)?;
        (expires_at > now).then_some(SessionClaims {
            agent_id,
            generation,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn round_trip_and_rejections() {
        let s = SessionSigner::new(&[7; 32]);
        let id = Uuid::new_v4();
        let now = Utc::now();
        let t = s.issue(id, 3, now + Duration::hours(1));
        let c = s.check(&t, now).unwrap();
        assert_eq!((c.agent_id, c.generation), (id, 3));
        assert_ne!(
            t,
            s.issue(id, 3, now + Duration::hours(1)),
            "nonce makes tokens unique"
        );
        assert!(s.check(&t, now + Duration::hours(2)).is_none(), "expired");
        assert!(
            SessionSigner::new(&[8; 32]).check(&t, now).is_none(),
            "other key"
        );
        // Flip one character of the body.
        let mut bad = t.clone().into_bytes();
        let i = bad.len() - 10;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(s.check(&String::from_utf8(bad).unwrap(), now).is_none());
        assert!(s.check("ias1_", now).is_none());
        assert!(s.check("ias1_!!!", now).is_none());
        assert!(s.check(&t[5..], now).is_none(), "prefix required");
        assert!(s.check(&format!("{t}{}", "A".repeat(200)), now).is_none());
    }
}

//! Agent keys (SPEC §2.1): the optional fields an agent adds to its exchange body, the message
//! its Ed25519 key signs, and the fingerprint that names a key for people.
//!
//! The message and the fingerprint are defined here, once, because the server and the agent
//! must compute them byte for byte alike. They need SHA-256 (from `ring`, which every program of
//! the project already links for TLS) and base64url; signing and verifying stay with the agent
//! SDK and the server.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{
    AwsInstanceIdentityRequest, AzureInstanceIdentityRequest, GoogleInstanceIdentityRequest,
    Provider,
};

/// First line of every agent key message; a new message layout would get a new version.
pub const MESSAGE_PREFIX: &str = "instauth-agent-key-v1";
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Largest accepted distance between `agent_key_time` and the server's clock, in seconds.
pub const MAX_TIME_SKEW_SECS: i64 = 60;
/// Characters of base64url SHA-256 that make a key's fingerprint.
pub const FINGERPRINT_LEN: usize = 16;
/// The `message` of every 401 that refuses an agent key (SPEC §2); its `detail` says why.
pub const REFUSED_MESSAGE: &str = "Invalid agent key.";

/// The body of one cloud's exchange endpoint.
pub trait ExchangeBody {
    /// The cloud whose proof the body carries.
    const PROVIDER: Provider;

    /// The requested agent name, as sent (not trimmed).
    fn agent_name(&self) -> Option<&str>;

    /// The proof field an agent key signature covers (SPEC §2.1).
    fn agent_key_proof_field(&self) -> &str;
}

impl ExchangeBody for AwsInstanceIdentityRequest {
    const PROVIDER: Provider = Provider::Aws;

    fn agent_name(&self) -> Option<&str> {
        self.agent_name.as_deref()
    }

    /// `pkcs7` when it is non-empty, else `signature`. White space only counts as empty, as it
    /// does when the server chooses which of the two to verify.
    fn agent_key_proof_field(&self) -> &str {
        match self.pkcs7.as_deref() {
            Some(p) if !p.trim().is_empty() => p,
            _ => &self.signature,
        }
    }
}

impl ExchangeBody for AzureInstanceIdentityRequest {
    const PROVIDER: Provider = Provider::Azure;

    fn agent_name(&self) -> Option<&str> {
        self.agent_name.as_deref()
    }

    fn agent_key_proof_field(&self) -> &str {
        &self.signature
    }
}

impl ExchangeBody for GoogleInstanceIdentityRequest {
    const PROVIDER: Provider = Provider::Gcp;

    fn agent_name(&self) -> Option<&str> {
        self.agent_name.as_deref()
    }

    fn agent_key_proof_field(&self) -> &str {
        &self.json_web_token
    }
}

/// The agent key fields of an exchange body (SPEC §2): all three or none.
///
/// They are flattened into the proof's object, where serde no longer knows a field's path, so a
/// value of the wrong type fails with `"<field>: <what is wrong>"` (the server's 400 names the
/// field from that).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentKeyFields {
    /// base64url (no padding) of the agent's 32-byte Ed25519 public key.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "public_key_field"
    )]
    pub agent_public_key: Option<String>,
    /// When the agent signed, in Unix seconds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "time_field"
    )]
    pub agent_key_time: Option<i64>,
    /// base64url (no padding) of the 64-byte Ed25519 signature of [`message`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "signature_field"
    )]
    pub agent_key_signature: Option<String>,
}

/// Reads an optional field, failing with an error that names it and quotes nothing.
fn named<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    field: &str,
    want: &str,
) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d).map_err(|_| serde::de::Error::custom(format!("{field}: {want}")))
}

fn public_key_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    named(d, "agent_public_key", "must be a string")
}

fn time_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    named(d, "agent_key_time", "must be an integer (Unix seconds)")
}

fn signature_field<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    named(d, "agent_key_signature", "must be a string")
}

impl AgentKeyFields {
    /// True when the body carries none of the fields (a Coder agent, or a keyless one).
    pub fn is_empty(&self) -> bool {
        self.agent_public_key.is_none()
            && self.agent_key_time.is_none()
            && self.agent_key_signature.is_none()
    }
}

/// An exchange body as it travels: the cloud's proof fields and the agent key fields side by
/// side in one JSON object. The proof structs stay as Coder defines them; the key fields are an
/// extension that Coder agents never send.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeRequest<R> {
    /// The cloud's proof and the agent name.
    #[serde(flatten)]
    pub body: R,
    /// The agent key fields, when the agent holds a key.
    #[serde(flatten)]
    pub agent_key: AgentKeyFields,
}

/// Lowercase hex of the SHA-256 of `bytes`.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The message an agent key signs (SPEC §2.1): `instauth-agent-key-v1` LF provider LF trimmed
/// agent name (empty if none) LF `time` in decimal LF lowercase hex SHA-256 of `proof_field`'s
/// UTF-8 bytes. No trailing LF.
///
/// The server and the agent both call this, so they cannot disagree on a byte of it.
pub fn message(
    provider: Provider,
    agent_name: Option<&str>,
    time: i64,
    proof_field: &str,
) -> String {
    format!(
        "{MESSAGE_PREFIX}\n{}\n{}\n{time}\n{}",
        provider.as_str(),
        agent_name.map(str::trim).unwrap_or_default(),
        sha256_hex(proof_field.as_bytes())
    )
}

/// base64url without padding, the encoding of keys and signatures on the wire.
pub fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding, strictly: padding, the standard alphabet's `+` and `/`,
/// white space and non-zero trailing bits are refused, so each value has one spelling.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.as_bytes())
        .ok()
}

/// A public key's fingerprint for people and logs: the first [`FINGERPRINT_LEN`] characters of
/// the base64url (no padding) SHA-256 of the raw 32-byte key.
pub fn fingerprint(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut text = encode(digest.as_ref());
    text.truncate(FINGERPRINT_LEN);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = message(Provider::Gcp, Some("  main "), 1_700_000_000, "abc");
        assert_eq!(
            m,
            "instauth-agent-key-v1\ngcp\nmain\n1700000000\n\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let m = message(Provider::Aws, None, -5, "");
        assert_eq!(
            m,
            "instauth-agent-key-v1\naws\n\n-5\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn aws_signs_pkcs7_when_present() {
        let mut r = AwsInstanceIdentityRequest {
            signature: "sig".into(),
            pkcs7: Some("p7".into()),
            ..Default::default()
        };
        assert_eq!(r.agent_key_proof_field(), "p7");
        r.pkcs7 = Some(" \n".into());
        assert_eq!(r.agent_key_proof_field(), "sig");
        r.pkcs7 = None;
        assert_eq!(r.agent_key_proof_field(), "sig");
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(decode("AAEC"), Some(vec![0, 1, 2]));
        assert_eq!(decode("AAE"), Some(vec![0, 1]));
        assert_eq!(decode("AAE="), None, "padding");
        assert_eq!(decode("AAF"), None, "non-zero trailing bits");
        assert_eq!(decode("+/+/"), None, "standard alphabet");
        assert_eq!(decode("AA EC"), None, "white space");
        assert_eq!(encode(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn fingerprints_are_short_and_stable() {
        let f = fingerprint(&[0u8; 32]);
        assert_eq!(f.len(), FINGERPRINT_LEN);
        assert_eq!(f, fingerprint(&[0u8; 32]));
        assert_ne!(f, fingerprint(&[1u8; 32]));
    }

    #[test]
    fn key_fields_flatten_beside_the_proof() {
        let r: ExchangeRequest<GoogleInstanceIdentityRequest> = serde_json::from_str(
            r#"{"json_web_token":"t","agent_name":"main","agent_public_key":"k","agent_key_time":12,"agent_key_signature":"s"}"#,
        )
        .unwrap();
        assert_eq!(r.body.json_web_token, "t");
        assert_eq!(r.agent_key.agent_key_time, Some(12));
        assert!(!r.agent_key.is_empty());
        let plain: ExchangeRequest<GoogleInstanceIdentityRequest> =
            serde_json::from_str(r#"{"json_web_token":"t"}"#).unwrap();
        assert!(plain.agent_key.is_empty());
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"json_web_token":"t"}"#
        );
    }
}

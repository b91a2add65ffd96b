//! The project's one vocabulary for "which cloud", "how an agent authenticates" and an agent's
//! state. Every crate (store, API, verifiers, CLI, agent SDK) uses these types; their serde names
//! are the wire strings, and [`std::str::FromStr`] / `as_str` give the same spelling for the
//! database, metrics, logs and command lines.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{
    AwsInstanceIdentityRequest, AzureInstanceIdentityRequest, ExchangeBody,
    GoogleInstanceIdentityRequest,
};

/// A string that names none of a vocabulary type's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownValue {
    /// What the value should have been, e.g. `provider`.
    pub kind: &'static str,
    /// The accepted spellings.
    pub expected: &'static [&'static str],
}

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown {}: expected one of {}",
            self.kind,
            self.expected.join(", ")
        )
    }
}

impl std::error::Error for UnknownValue {}

/// Declares a fieldless enum whose every value has one spelling, used by serde, `Display`,
/// `FromStr` and `as_str` alike.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every spelling, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The wire (and database) spelling.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, expected: $name::NAMES }),
                }
            }
        }
    };
}

vocabulary! {
    /// The cloud that vouches for an instance.
    Provider, "provider" {
        /// Amazon Web Services: EC2 instance identity documents.
        Aws => "aws",
        /// Microsoft Azure: IMDS attested data.
        Azure => "azure",
        /// Google Cloud: Compute Engine identity tokens.
        Gcp => "gcp",
    }
}

impl Provider {
    /// The name used in messages, e.g. "Invalid AWS identity.".
    pub const fn label(self) -> &'static str {
        match self {
            Provider::Aws => "AWS",
            Provider::Azure => "Azure",
            Provider::Gcp => "GCP",
        }
    }

    /// The identity claim naming the account the instance belongs to: AWS `account_id`, Azure
    /// `subscription_id`, GCP `project_id`. The key of a resource's `expect` and of the
    /// identity JSON (SPEC §4, §6).
    pub const fn account_claim(self) -> &'static str {
        match self {
            Provider::Aws => "account_id",
            Provider::Azure => "subscription_id",
            Provider::Gcp => "project_id",
        }
    }

    /// The identity claim naming where the instance runs: AWS `region`, Azure `location`, GCP
    /// `zone`.
    pub const fn location_claim(self) -> &'static str {
        match self {
            Provider::Aws => "region",
            Provider::Azure => "location",
            Provider::Gcp => "zone",
        }
    }

    /// The server flag holding this cloud's account allow-list (SPEC §6).
    pub const fn allow_list_flag(self) -> &'static str {
        match self {
            Provider::Aws => "--aws-accounts",
            Provider::Azure => "--azure-subscriptions",
            Provider::Gcp => "--gcp-projects",
        }
    }

    /// The agent authentication method that uses this cloud's proof.
    pub const fn auth(self) -> AgentAuth {
        match self {
            Provider::Aws => AgentAuth::AwsInstanceIdentity,
            Provider::Azure => AgentAuth::AzureInstanceIdentity,
            Provider::Gcp => AgentAuth::GoogleInstanceIdentity,
        }
    }
}

vocabulary! {
    /// How an agent authenticates (the `auth` of SPEC §1, Coder's `CODER_AGENT_AUTH`).
    AgentAuth, "auth" {
        /// A static agent token issued when the build is created.
        Token => "token",
        /// AWS instance identity document.
        AwsInstanceIdentity => "aws-instance-identity",
        /// Azure attested data.
        AzureInstanceIdentity => "azure-instance-identity",
        /// Google instance identity JWT.
        GoogleInstanceIdentity => "google-instance-identity",
    }
}

impl AgentAuth {
    /// The cloud whose proof this method exchanges; `None` for static tokens.
    pub const fn provider(self) -> Option<Provider> {
        match self {
            AgentAuth::Token => None,
            AgentAuth::AwsInstanceIdentity => Some(Provider::Aws),
            AgentAuth::AzureInstanceIdentity => Some(Provider::Azure),
            AgentAuth::GoogleInstanceIdentity => Some(Provider::Gcp),
        }
    }

    /// True for the three cloud instance identity methods.
    pub const fn is_instance_identity(self) -> bool {
        self.provider().is_some()
    }
}

vocabulary! {
    /// An agent's lifecycle state, as reported with heartbeats and listed by the admin API.
    LifecycleState, "lifecycle_state" {
        /// Never reported: the state of an agent before its first heartbeat. Agents do not send it.
        Created => "created",
        /// Starting up.
        Starting => "starting",
        /// Ready to serve.
        Ready => "ready",
        /// Shutting down.
        ShuttingDown => "shutting_down",
        /// Stopped.
        Off => "off",
    }
}

vocabulary! {
    /// Whether an agent is heard from (SPEC §3).
    ConnectionStatus, "status" {
        /// No heartbeat yet.
        Connecting => "connecting",
        /// Last heartbeat younger than three heartbeat intervals.
        Connected => "connected",
        /// Last heartbeat older than that.
        Disconnected => "disconnected",
    }
}

/// A vocabulary value as a client sent it: a known value, or the unknown spelling, kept so that
/// the server can answer "Validation failed." naming the field instead of rejecting the whole
/// body as malformed JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Wire<T> {
    /// One of the type's values.
    Known(T),
    /// Any other string.
    Unknown(String),
}

impl<T: Copy> Wire<T> {
    /// The value, if known.
    pub fn known(&self) -> Option<T> {
        match self {
            Wire::Known(v) => Some(*v),
            Wire::Unknown(_) => None,
        }
    }
}

impl<T> From<T> for Wire<T> {
    fn from(v: T) -> Self {
        Wire::Known(v)
    }
}

/// An instance identity proof: the body an agent POSTs to its cloud's exchange endpoint.
///
/// Exhaustive on purpose: one variant per [`Provider`], matched without a wildcard, so adding a
/// cloud makes every place that must handle it fail to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// AWS instance identity document with its signature(s).
    Aws(AwsInstanceIdentityRequest),
    /// Azure attested document.
    Azure(AzureInstanceIdentityRequest),
    /// Google identity token.
    Gcp(GoogleInstanceIdentityRequest),
}

impl Proof {
    /// The cloud that signed it.
    pub fn provider(&self) -> Provider {
        match self {
            Proof::Aws(_) => Provider::Aws,
            Proof::Azure(_) => Provider::Azure,
            Proof::Gcp(_) => Provider::Gcp,
        }
    }

    /// The agent name the body requests, as sent (not trimmed).
    pub fn agent_name(&self) -> Option<&str> {
        match self {
            Proof::Aws(r) => r.agent_name.as_deref(),
            Proof::Azure(r) => r.agent_name.as_deref(),
            Proof::Gcp(r) => r.agent_name.as_deref(),
        }
    }

    /// Sets the requested agent name: trimmed of surrounding white space, omitted when empty.
    pub fn set_agent_name(&mut self, name: Option<&str>) {
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        match self {
            Proof::Aws(r) => r.agent_name = name,
            Proof::Azure(r) => r.agent_name = name,
            Proof::Gcp(r) => r.agent_name = name,
        }
    }

    /// The proof field an agent key signature covers (SPEC §2.1): AWS `pkcs7` when non-empty,
    /// else `signature`; Azure `signature`; GCP `json_web_token`.
    pub fn agent_key_proof_field(&self) -> &str {
        match self {
            Proof::Aws(r) => r.agent_key_proof_field(),
            Proof::Azure(r) => r.agent_key_proof_field(),
            Proof::Gcp(r) => r.agent_key_proof_field(),
        }
    }

    /// SPEC §2.1's message for this proof, its (trimmed) agent name and `time`: what an agent
    /// key signs.
    pub fn agent_key_message(&self, time: i64) -> String {
        crate::agent_key::message(
            self.provider(),
            self.agent_name(),
            time,
            self.agent_key_proof_field(),
        )
    }

    /// Decodes the JSON body POSTed to `provider`'s exchange endpoint.
    pub fn from_json(provider: Provider, body: &[u8]) -> Result<Proof, serde_json::Error> {
        Ok(match provider {
            Provider::Aws => Proof::Aws(serde_json::from_slice(body)?),
            Provider::Azure => Proof::Azure(serde_json::from_slice(body)?),
            Provider::Gcp => Proof::Gcp(serde_json::from_slice(body)?),
        })
    }

    /// The JSON body to POST.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Proof::Aws(r) => serde_json::to_vec(r),
            Proof::Azure(r) => serde_json::to_vec(r),
            Proof::Gcp(r) => serde_json::to_vec(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_through_serde_and_from_str() {
        for p in Provider::ALL {
            let json = serde_json::to_string(p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(p.as_str().parse::<Provider>().unwrap(), *p);
            assert_eq!(p.auth().provider(), Some(*p));
        }
        for a in AgentAuth::ALL {
            assert_eq!(serde_json::to_string(a).unwrap(), format!("\"{a}\""));
            assert_eq!(a.as_str().parse::<AgentAuth>().unwrap(), *a);
        }
        assert_eq!(
            serde_json::to_string(&LifecycleState::ShuttingDown).unwrap(),
            "\"shutting_down\""
        );
        assert_eq!(ConnectionStatus::Connected.as_str(), "connected");
        let err = "nope".parse::<AgentAuth>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown auth: expected one of token, aws-instance-identity, azure-instance-identity, google-instance-identity"
        );
    }

    #[test]
    fn wire_keeps_unknown_spellings() {
        let w: Wire<LifecycleState> = serde_json::from_str("\"ready\"").unwrap();
        assert_eq!(w.known(), Some(LifecycleState::Ready));
        let w: Wire<LifecycleState> = serde_json::from_str("\"sleeping\"").unwrap();
        assert_eq!(w, Wire::Unknown("sleeping".into()));
        assert!(serde_json::from_str::<Wire<LifecycleState>>("3").is_err());
    }

    #[test]
    fn proof_names_its_agent_trimmed() {
        let mut p = Proof::Gcp(GoogleInstanceIdentityRequest::default());
        p.set_agent_name(Some("  main "));
        assert_eq!(p.agent_name(), Some("main"));
        p.set_agent_name(Some("   "));
        assert_eq!(p.agent_name(), None);
        assert_eq!(p.provider(), Provider::Gcp);
    }
}

//! Common identity types, proof type, clock and errors for instauth verifiers.
//!
//! The verifier crates (`instauth-verify-aws`, `-azure`, `-gcp`) turn a cloud's instance identity
//! proof into a [`Verified<Identity>`]. Nothing else can make a `Verified`: its constructor is
//! only compiled with the `__verifier-internals` feature, which only the verifier crates enable
//! (`tests/sealed.rs` checks every workspace manifest, and, since cargo unifies features within a
//! build, that no source outside the verifier crates names the constructor). Code that holds an
//! `Identity` that did not come out of a verifier therefore cannot hand it to anything that asks
//! for a `Verified` one.
//!
//! This crate also holds the pieces the verifiers share: the injectable [`Clock`], a strict
//! base64 decoder, the PKCS#7 `SignedData` reader used for AWS and Azure ([`pkcs7`]), and the
//! trust-material vocabulary of both ([`trust`]: one [`trust::TrustError`] for loading PEM
//! files, and [`trust::TrustCertificate`], what `instauth trust list` prints).

use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use instauth_types::Provider;
use serde::Serialize;

pub mod ber;
pub mod encoding;
pub mod pem;
pub mod pkcs7;
mod prepared;
pub mod trust;

/// Who an instance is, as stated by its cloud.
///
/// Serialises flat, e.g. `{"provider":"aws","instance_id":"i-0...","account_id":"...","region":"..."}`,
/// which is the JSON `instauth identity verify` prints (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum Identity {
    /// An EC2 instance.
    Aws {
        /// `instanceId` of the identity document.
        instance_id: String,
        /// `accountId` of the identity document.
        account_id: String,
        /// `region` of the identity document.
        region: String,
    },
    /// An Azure VM.
    ///
    /// Attested documents only always carry `vmId` (and `timeStamp`); older ones lack
    /// `subscriptionId`, and none seen so far carries `location`. Absent or empty fields are
    /// `None` and left out of the JSON.
    Azure {
        /// `vmId` of the attested document.
        instance_id: String,
        /// `subscriptionId` of the attested document, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        subscription_id: Option<String>,
        /// `location` of the attested document, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<String>,
    },
    /// A Compute Engine instance.
    Gcp {
        /// `google.compute_engine.instance_id` of the token.
        instance_id: String,
        /// `google.compute_engine.project_id` of the token.
        project_id: String,
        /// `google.compute_engine.zone` of the token.
        zone: String,
    },
}

impl Identity {
    /// The provider that issued the proof.
    pub fn provider(&self) -> Provider {
        match self {
            Identity::Aws { .. } => Provider::Aws,
            Identity::Azure { .. } => Provider::Azure,
            Identity::Gcp { .. } => Provider::Gcp,
        }
    }

    /// The cloud's instance ID: AWS `instanceId`, Azure `vmId`, GCP numeric `instance_id`.
    pub fn instance_id(&self) -> &str {
        match self {
            Identity::Aws { instance_id, .. }
            | Identity::Azure { instance_id, .. }
            | Identity::Gcp { instance_id, .. } => instance_id,
        }
    }

    /// Every claim by its JSON name, in serialisation order (absent optional ones as `None`):
    /// for checks over all of them without building the JSON.
    pub fn claims(&self) -> [(&'static str, Option<&str>); 3] {
        match self {
            Identity::Aws {
                instance_id,
                account_id,
                region,
            } => [
                ("instance_id", Some(instance_id)),
                ("account_id", Some(account_id)),
                ("region", Some(region)),
            ],
            Identity::Azure {
                instance_id,
                subscription_id,
                location,
            } => [
                ("instance_id", Some(instance_id)),
                ("subscription_id", subscription_id.as_deref()),
                ("location", location.as_deref()),
            ],
            Identity::Gcp {
                instance_id,
                project_id,
                zone,
            } => [
                ("instance_id", Some(instance_id)),
                ("project_id", Some(project_id)),
                ("zone", Some(zone)),
            ],
        }
    }
}

/// A value that a verifier checked against the cloud's trust material.
///
/// Only the verifier crates can construct one (see the crate documentation), so a function that
/// takes `Verified<Identity>` cannot be called with an identity read from an unchecked proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T> {
    value: T,
}

impl<T> Verified<T> {
    /// Wraps a value whose proof has just been checked.
    ///
    /// Compiled only for the verifier crates; calling it anywhere else defeats the type.
    #[cfg(feature = "__verifier-internals")]
    #[doc(hidden)]
    pub fn __new_after_verification(value: T) -> Self {
        Verified { value }
    }

    /// The verified value.
    pub fn get(&self) -> &T {
        &self.value
    }

    /// Unwraps the verified value (it is no longer marked as verified).
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Serialize> Serialize for Verified<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

/// The time source verifiers check validity against.
///
/// Injected so that old proofs can be checked at their own time (`--at`) and tests can move time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stands still until moved with [`FixedClock::set`] or [`FixedClock::advance`].
#[derive(Debug)]
pub struct FixedClock {
    now: Mutex<DateTime<Utc>>,
}

impl FixedClock {
    /// A clock showing `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        FixedClock {
            now: Mutex::new(now),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: DateTime<Utc>) {
        // A poisoned lock only means another thread panicked while holding it; the time
        // value itself cannot be half-written, so keep using it.
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// Moves the time forward (or back, with a negative duration).
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> DateTime<Utc> {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_serialises_flat_per_provider() {
        let aws = Identity::Aws {
            instance_id: "i-1".into(),
            account_id: "123".into(),
            region: "us-east-1".into(),
        };
        assert_eq!(
            serde_json::to_value(&aws).unwrap(),
            serde_json::json!({"provider":"aws","instance_id":"i-1","account_id":"123","region":"us-east-1"})
        );
        let gcp = Identity::Gcp {
            instance_id: "42".into(),
            project_id: "p".into(),
            zone: "z".into(),
        };
        assert_eq!(
            serde_json::to_value(&gcp).unwrap(),
            serde_json::json!({"provider":"gcp","instance_id":"42","project_id":"p","zone":"z"})
        );
        assert_eq!(gcp.provider(), Provider::Gcp);
        let azure = Identity::Azure {
            instance_id: "vm".into(),
            subscription_id: Some("s".into()),
            location: None,
        };
        assert_eq!(
            serde_json::to_value(&azure).unwrap(),
            serde_json::json!({"provider":"azure","instance_id":"vm","subscription_id":"s"})
        );
        assert_eq!(gcp.instance_id(), "42");
    }

    /// `claims()` is what the JSON carries, name for name and value for value, so a check over
    /// the claims sees every string the identity would print.
    #[test]
    fn claims_are_the_serialised_fields() {
        let identities = [
            Identity::Aws {
                instance_id: "i-1".into(),
                account_id: "123".into(),
                region: "us-east-1".into(),
            },
            Identity::Azure {
                instance_id: "vm".into(),
                subscription_id: Some("s".into()),
                location: None,
            },
            Identity::Azure {
                instance_id: "vm".into(),
                subscription_id: None,
                location: Some("westeurope".into()),
            },
            Identity::Gcp {
                instance_id: "42".into(),
                project_id: "p".into(),
                zone: "z".into(),
            },
        ];
        for identity in identities {
            let json = serde_json::to_value(&identity).unwrap();
            let mut from_json: Vec<(String, String)> = json
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "provider")
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let mut from_claims: Vec<(String, String)> = identity
                .claims()
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
                .collect();
            from_json.sort();
            from_claims.sort();
            assert_eq!(from_claims, from_json, "{identity:?}");
        }
    }

    #[test]
    fn fixed_clock_moves_only_when_told() {
        let t = DateTime::parse_from_rfc3339("2022-04-19T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = FixedClock::new(t);
        assert_eq!(c.now(), t);
        c.advance(chrono::Duration::seconds(61));
        assert_eq!((c.now() - t).num_seconds(), 61);
    }
}

//! Who may exchange: the claims of a verified identity as the policy's access rules see them,
//! shared by the exchange endpoints and `instauth identity verify`.

use instauth_policy::{AllowLists, Claims, NotAllowed};
use instauth_verify::Identity;

/// A claim as a verifier reports it: a string that may be empty, or an optional one. An empty
/// claim is no claim, so it never satisfies a rule that names a value.
trait Claim {
    fn claim(&self) -> Option<&str>;
}

impl Claim for String {
    fn claim(&self) -> Option<&str> {
        Some(self.as_str()).filter(|s| !s.is_empty())
    }
}

impl Claim for Option<String> {
    fn claim(&self) -> Option<&str> {
        self.as_deref().filter(|s| !s.is_empty())
    }
}

/// The account-like and location-like claims of `identity`.
pub fn claims(identity: &Identity) -> Claims<'_> {
    let provider = identity.provider();
    let (account, location) = match identity {
        Identity::Aws {
            account_id, region, ..
        } => (account_id.claim(), region.claim()),
        Identity::Azure {
            subscription_id,
            location,
            ..
        } => (subscription_id.claim(), location.claim()),
        Identity::Gcp {
            project_id, zone, ..
        } => (project_id.claim(), zone.claim()),
    };
    Claims {
        provider,
        account,
        location,
    }
}

/// Checks a verified identity against the server's allow-lists.
pub fn check_allow_lists(identity: &Identity, lists: &AllowLists) -> Result<(), NotAllowed> {
    instauth_policy::check_allow_lists(&claims(identity), lists)
}

//! The `expect` of a resource (SPEC §4): which claims of a verified identity its agents'
//! exchanges must carry.

use std::collections::BTreeMap;

use instauth_types::Provider;

use super::{problem, MAX_EXPECT_VALUE_LEN};
use crate::model::{FieldError, ResourceExpect};

/// Checks a resource's `expect` against the clouds of its root agents: every key must be one of
/// that cloud's two claims, every value a plain string. An empty object expects nothing.
pub(super) fn validate_expect(
    out: &mut Vec<FieldError>,
    rf: &str,
    expect: BTreeMap<String, serde_json::Value>,
    clouds: &[Provider],
) -> Option<ResourceExpect> {
    let mut distinct: Vec<Provider> = clouds.to_vec();
    distinct.sort();
    distinct.dedup();
    if expect.is_empty() {
        return None;
    }
    let provider = match distinct.as_slice() {
        [one] => *one,
        [] => {
            problem(
                out,
                format!("{rf}.expect"),
                "needs a root agent with instance identity auth on the resource",
            );
            return None;
        }
        several => {
            let names: Vec<&str> = several.iter().map(|p| p.as_str()).collect();
            problem(
                out,
                format!("{rf}.expect"),
                format!(
                    "the resource's agents use several clouds ({}); expect names one cloud's claims",
                    names.join(", ")
                ),
            );
            return None;
        }
    };
    let (account_claim, location_claim) = (provider.account_claim(), provider.location_claim());
    let mut valid = ResourceExpect {
        provider,
        account: None,
        location: None,
    };
    for (key, value) in expect {
        // The key is the client's text: keep it short in the field path.
        let field = format!("{rf}.expect.{}", key.chars().take(64).collect::<String>());
        let slot = if key == account_claim {
            &mut valid.account
        } else if key == location_claim {
            &mut valid.location
        } else {
            problem(
                out,
                field,
                format!(
                    "unknown key for {provider} agents: expected {account_claim} or {location_claim}"
                ),
            );
            continue;
        };
        match value {
            serde_json::Value::String(v)
                if !v.is_empty() && v.len() <= MAX_EXPECT_VALUE_LEN && v.trim() == v =>
            {
                *slot = Some(v);
            }
            _ => problem(
                out,
                field,
                format!(
                    "must be a string of 1 to {MAX_EXPECT_VALUE_LEN} bytes without surrounding \
                     white space"
                ),
            ),
        }
    }
    Some(valid)
}

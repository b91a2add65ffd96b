//! Which verified identities may exchange at all (the server's allow-lists, SPEC §6) and for a
//! given resource (its `expect`, SPEC §4). Pure: the caller hands in the claims of an identity
//! that a verifier has already checked.

use std::fmt;

use instauth_types::Provider;

/// Most allowed values a refusal lists; the rest are counted.
const LISTED: usize = 10;

/// The server's account allow-lists (`--aws-accounts`, `--gcp-projects`,
/// `--azure-subscriptions`). An empty list allows any account of that cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowLists {
    /// AWS account IDs.
    pub aws_accounts: Vec<String>,
    /// Azure subscription IDs.
    pub azure_subscriptions: Vec<String>,
    /// GCP project IDs.
    pub gcp_projects: Vec<String>,
}

impl AllowLists {
    /// The list for `provider`'s accounts.
    pub fn for_provider(&self, provider: Provider) -> &[String] {
        match provider {
            Provider::Aws => &self.aws_accounts,
            Provider::Azure => &self.azure_subscriptions,
            Provider::Gcp => &self.gcp_projects,
        }
    }

    /// True when no list restricts anything.
    pub fn is_empty(&self) -> bool {
        Provider::ALL
            .iter()
            .all(|p| self.for_provider(*p).is_empty())
    }

    /// A comma-separated flag value as a list: entries trimmed, empty entries dropped, so `""`
    /// (the flag given empty) means "any".
    pub fn parse_list(value: &str) -> Vec<String> {
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// The claims of a verified identity that access rules look at. `None` (or an empty claim,
/// which the caller maps to `None`) never satisfies a rule that names a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims<'a> {
    /// The cloud that vouched for the identity.
    pub provider: Provider,
    /// AWS account, Azure subscription or GCP project.
    pub account: Option<&'a str>,
    /// AWS region, Azure location or GCP zone.
    pub location: Option<&'a str>,
}

/// A resource's `expect`: the values its agents' identities must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation<'a> {
    /// The resource's name, for the refusal's wording.
    pub resource: &'a str,
    /// The cloud whose claims are named.
    pub provider: Provider,
    /// The expected account-like claim, if any.
    pub account: Option<&'a str>,
    /// The expected location-like claim, if any.
    pub location: Option<&'a str>,
}

/// Which rule refused an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The server's allow-list for the cloud (its flag, e.g. `--aws-accounts`).
    AllowList(&'static str),
    /// The `expect` of the named resource.
    Resource(String),
}

/// Why an identity is not allowed: the claim, what was expected, what the identity says. Its
/// `Display` is the `detail` of the 403 and the audit reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAllowed {
    /// The claim's name, e.g. `account_id`.
    pub claim: &'static str,
    /// The accepted values (one for a resource's expectation).
    pub expected: Vec<String>,
    /// The identity's value; `None` when the proof carries none.
    pub actual: Option<String>,
    /// The rule that refused it.
    pub rule: Rule,
}

impl fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: expected ", self.claim)?;
        if self.expected.len() > 1 {
            f.write_str("one of ")?;
        }
        for (i, v) in self.expected.iter().take(LISTED).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{v:?}")?;
        }
        if self.expected.len() > LISTED {
            write!(f, " and {} more", self.expected.len() - LISTED)?;
        }
        match &self.rule {
            Rule::AllowList(flag) => write!(f, " (server allow-list {flag})")?,
            Rule::Resource(name) => write!(f, " (expect of resource {name:?})")?,
        }
        match &self.actual {
            Some(v) => write!(f, ", got {v:?}"),
            None => f.write_str(", got nothing (the proof carries no such claim)"),
        }
    }
}

impl std::error::Error for NotAllowed {}

/// Checks `claims` against the server's allow-list for its cloud.
pub fn check_allow_lists(claims: &Claims<'_>, lists: &AllowLists) -> Result<(), NotAllowed> {
    let allowed = lists.for_provider(claims.provider);
    if allowed.is_empty()
        || claims
            .account
            .is_some_and(|a| allowed.iter().any(|v| v == a))
    {
        return Ok(());
    }
    Err(NotAllowed {
        claim: claims.provider.account_claim(),
        expected: allowed.to_vec(),
        actual: claims.account.map(str::to_owned),
        rule: Rule::AllowList(claims.provider.allow_list_flag()),
    })
}

/// Checks `claims` against a resource's expectation: every value it names must be present and
/// equal (exact, case-sensitive: clouds print these identifiers in one spelling).
pub fn check_expectation(claims: &Claims<'_>, expect: &Expectation<'_>) -> Result<(), NotAllowed> {
    let refuse = |claim: &'static str, expected: &str, actual: Option<&str>| NotAllowed {
        claim,
        expected: vec![expected.to_owned()],
        actual: actual.map(str::to_owned),
        rule: Rule::Resource(expect.resource.to_owned()),
    };
    if expect.provider != claims.provider {
        // Validation keeps a resource's expectation in its agents' cloud; if they ever differ,
        // refuse rather than compare one cloud's claims with another's.
        return Err(refuse(
            "provider",
            expect.provider.as_str(),
            Some(claims.provider.as_str()),
        ));
    }
    let rules = [
        (
            expect.provider.account_claim(),
            expect.account,
            claims.account,
        ),
        (
            expect.provider.location_claim(),
            expect.location,
            claims.location,
        ),
    ];
    for (claim, expected, actual) in rules {
        if let Some(expected) = expected {
            if actual != Some(expected) {
                return Err(refuse(claim, expected, actual));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(
        provider: Provider,
        account: Option<&'static str>,
        location: Option<&'static str>,
    ) -> Claims<'static> {
        Claims {
            provider,
            account,
            location,
        }
    }

    fn lists(aws: &[&str], azure: &[&str], gcp: &[&str]) -> AllowLists {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        AllowLists {
            aws_accounts: v(aws),
            azure_subscriptions: v(azure),
            gcp_projects: v(gcp),
        }
    }

    #[test]
    fn allow_list_table() {
        use Provider::*;
        let l = lists(&["111", "222"], &["sub-a"], &[]);
        type Case = (&'static str, Claims<'static>, Result<(), &'static str>);
        let cases: Vec<Case> = vec![
            (
                "listed account",
                claims(Aws, Some("222"), Some("r")),
                Ok(()),
            ),
            (
                "unlisted account",
                claims(Aws, Some("333"), None),
                Err(
                    r#"account_id: expected one of "111", "222" (server allow-list --aws-accounts), got "333""#,
                ),
            ),
            (
                "no account claim",
                claims(Azure, None, None),
                Err(
                    r#"subscription_id: expected "sub-a" (server allow-list --azure-subscriptions), got nothing (the proof carries no such claim)"#,
                ),
            ),
            (
                "listed subscription",
                claims(Azure, Some("sub-a"), None),
                Ok(()),
            ),
            (
                "empty list allows any project",
                claims(Gcp, Some("p"), None),
                Ok(()),
            ),
            (
                "empty list allows a missing claim",
                claims(Gcp, None, None),
                Ok(()),
            ),
        ];
        for (what, c, want) in cases {
            let got = check_allow_lists(&c, &l).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_owned), "{what}");
        }
        assert!(AllowLists::default().is_empty());
        assert!(!l.is_empty());
    }

    #[test]
    fn expectation_table() {
        use Provider::*;
        let e = |provider, account, location| Expectation {
            resource: "vm",
            provider,
            account,
            location,
        };
        type Case = (
            &'static str,
            Claims<'static>,
            Expectation<'static>,
            Result<(), &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "both match",
                claims(Aws, Some("1"), Some("us-east-1")),
                e(Aws, Some("1"), Some("us-east-1")),
                Ok(()),
            ),
            (
                "only the account named",
                claims(Aws, Some("1"), Some("x")),
                e(Aws, Some("1"), None),
                Ok(()),
            ),
            (
                "nothing named",
                claims(Gcp, None, None),
                e(Gcp, None, None),
                Ok(()),
            ),
            (
                "other account",
                claims(Aws, Some("2"), Some("us-east-1")),
                e(Aws, Some("1"), Some("us-east-1")),
                Err(r#"account_id: expected "1" (expect of resource "vm"), got "2""#),
            ),
            (
                "other zone",
                claims(Gcp, Some("p"), Some("europe-west1-b")),
                e(Gcp, Some("p"), Some("us-central1-a")),
                Err(
                    r#"zone: expected "us-central1-a" (expect of resource "vm"), got "europe-west1-b""#,
                ),
            ),
            (
                "missing location fails",
                claims(Azure, Some("s"), None),
                e(Azure, None, Some("westeurope")),
                Err(
                    r#"location: expected "westeurope" (expect of resource "vm"), got nothing (the proof carries no such claim)"#,
                ),
            ),
            (
                "case matters",
                claims(Azure, Some("S"), None),
                e(Azure, Some("s"), None),
                Err(r#"subscription_id: expected "s" (expect of resource "vm"), got "S""#),
            ),
            (
                "another cloud's expectation never matches",
                claims(Gcp, Some("1"), None),
                e(Aws, Some("1"), None),
                Err(r#"provider: expected "aws" (expect of resource "vm"), got "gcp""#),
            ),
        ];
        for (what, c, x, want) in cases {
            let got = check_expectation(&c, &x).map_err(|e| e.to_string());
            assert_eq!(got, want.map_err(str::to_owned), "{what}");
        }
    }

    #[test]
    fn long_lists_are_cut() {
        let many: Vec<String> = (0..13).map(|i| i.to_string()).collect();
        let l = AllowLists {
            aws_accounts: many,
            ..Default::default()
        };
        let e = check_allow_lists(&claims(Provider::Aws, Some("x"), None), &l).unwrap_err();
        assert!(e.to_string().contains(r#""9" and 3 more (server"#), "{e}");
    }

    #[test]
    fn flag_values_split_on_commas() {
        assert_eq!(AllowLists::parse_list(" 1, 2 ,,3 "), ["1", "2", "3"]);
        assert!(AllowLists::parse_list("").is_empty());
        assert!(AllowLists::parse_list(" , ").is_empty());
    }
}

//! The decisions of the token exchange as pure functions: which agent a request selects
//! (SPEC.md §2) and whether a verified identity may exchange at all or for a resource
//! ([`access`]: allow-lists and `expect`, SPEC.md §4, §6).
//!
//! Architecture invariant: this crate performs no IO, has no async and depends on nothing but
//! std and `instauth-types` (for the vocabulary), so every row of a decision table is a plain
//! unit test.

pub mod access;

pub use access::{
    check_allow_lists, check_expectation, AllowLists, Claims, Expectation, NotAllowed, Rule,
};

/// What the exchange should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Exactly one candidate: issue its session.
    Select(T),
    /// No candidate (of the requested name). Carries the sorted, de-duplicated names of all
    /// candidates for the instance, so the client can be told what exists.
    NotFound {
        /// The trimmed requested name, if one was given.
        requested: Option<String>,
        /// Names of every candidate of the instance.
        names: Vec<String>,
    },
    /// Several candidates match: the agent must name itself (or the name is ambiguous across
    /// workspaces). Sorted, de-duplicated names.
    Conflict {
        /// The names to choose from.
        names: Vec<String>,
    },
}

/// A candidate's name, as the policy sees it.
pub trait Named {
    /// The agent's name.
    fn name(&self) -> &str;
}

/// The requested agent name after trimming white space; empty means "not given".
pub fn requested_name(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|s| !s.is_empty())
}

fn sorted_names<T: Named>(candidates: &[T]) -> Vec<String> {
    let mut names: Vec<String> = candidates.iter().map(|c| c.name().to_owned()).collect();
    names.sort();
    names.dedup();
    names
}

/// Decides between `candidates` (all candidates of the instance) for a request that named
/// `requested` (raw, untrimmed).
///
/// - name given: the candidates of that name; none → not found, one → select, several → conflict;
/// - no name: one candidate → select (the legacy single-agent behaviour), none → not found,
///   several → conflict.
pub fn decide<T: Named>(requested: Option<&str>, candidates: Vec<T>) -> Decision<T> {
    match requested_name(requested) {
        Some(name) => {
            let all = sorted_names(&candidates);
            let mut matching: Vec<T> = candidates
                .into_iter()
                .filter(|c| c.name() == name)
                .collect();
            match matching.len() {
                0 => Decision::NotFound {
                    requested: Some(name.to_owned()),
                    names: all,
                },
                1 => match matching.pop() {
                    Some(one) => Decision::Select(one),
                    None => Decision::NotFound {
                        requested: Some(name.to_owned()),
                        names: all,
                    },
                },
                _ => Decision::Conflict {
                    names: sorted_names(&matching),
                },
            }
        }
        None => match candidates.len() {
            0 => Decision::NotFound {
                requested: None,
                names: Vec::new(),
            },
            1 => {
                let mut candidates = candidates;
                match candidates.pop() {
                    Some(one) => Decision::Select(one),
                    None => Decision::NotFound {
                        requested: None,
                        names: Vec::new(),
                    },
                }
            }
            _ => Decision::Conflict {
                names: sorted_names(&candidates),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (workspace, agent name) as the store would return it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct C(&'static str, &'static str);
    impl Named for C {
        fn name(&self) -> &str {
            self.1
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// One row per line of SPEC.md §2. Sub-agents, older builds and deleted workspaces never
    /// reach the policy: the store's candidate query excludes them (tested in instauth-store
    /// and end to end in instauth-api), so here they appear as the candidates that remain.
    #[test]
    fn decision_table() {
        use Decision::*;
        type Case = (&'static str, Option<&'static str>, Vec<C>, Decision<C>);
        let cases: Vec<Case> = vec![
            (
                "one agent, no name (legacy)",
                None,
                vec![C("w", "main")],
                Select(C("w", "main")),
            ),
            (
                "one agent, its name",
                Some("main"),
                vec![C("w", "main")],
                Select(C("w", "main")),
            ),
            (
                "one agent, empty name",
                Some(""),
                vec![C("w", "main")],
                Select(C("w", "main")),
            ),
            (
                "two agents, no name",
                None,
                vec![C("w", "main"), C("w", "dev")],
                Conflict {
                    names: names(&["dev", "main"]),
                },
            ),
            (
                "two agents, padded name",
                Some(" main "),
                vec![C("w", "main"), C("w", "dev")],
                Select(C("w", "main")),
            ),
            (
                "two agents, white space only",
                Some("   "),
                vec![C("w", "main"), C("w", "dev")],
                Conflict {
                    names: names(&["dev", "main"]),
                },
            ),
            (
                "unknown name lists the candidates",
                Some("ghost"),
                vec![C("w", "main"), C("w", "dev")],
                NotFound {
                    requested: Some("ghost".into()),
                    names: names(&["dev", "main"]),
                },
            ),
            (
                "no candidates, no name",
                None,
                vec![],
                NotFound {
                    requested: None,
                    names: vec![],
                },
            ),
            (
                "no candidates, a name",
                Some("main"),
                vec![],
                NotFound {
                    requested: Some("main".into()),
                    names: vec![],
                },
            ),
            (
                "same instance in two workspaces, no name",
                None,
                vec![C("a", "main"), C("b", "dev")],
                Conflict {
                    names: names(&["dev", "main"]),
                },
            ),
            (
                "same instance in two workspaces, name matching one",
                Some("dev"),
                vec![C("a", "main"), C("b", "dev")],
                Select(C("b", "dev")),
            ),
            (
                "same name in two workspaces is ambiguous",
                Some("main"),
                vec![C("a", "main"), C("b", "main")],
                Conflict {
                    names: names(&["main"]),
                },
            ),
            (
                "same name in two workspaces, no name: de-duplicated",
                None,
                vec![C("a", "main"), C("b", "main"), C("b", "dev")],
                Conflict {
                    names: names(&["dev", "main"]),
                },
            ),
            (
                "case matters",
                Some("Main"),
                vec![C("w", "main")],
                NotFound {
                    requested: Some("Main".into()),
                    names: names(&["main"]),
                },
            ),
        ];
        for (what, requested, candidates, want) in cases {
            assert_eq!(decide(requested, candidates), want, "{what}");
        }
    }

    #[test]
    fn trimming() {
        assert_eq!(requested_name(Some(" \t main\n")), Some("main"));
        assert_eq!(requested_name(Some(" \t ")), None);
        assert_eq!(requested_name(None), None);
    }
}

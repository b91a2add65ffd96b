//! Agents at run time: the exchange's candidate query, agent key binding and reset, the agent
//! API's session and token lookups, session revocation and heartbeats.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use instauth_types::AgentAuth;
use uuid::Uuid;

use crate::batch::Kind;
use crate::liveness::{CacheStats, Live};
use crate::model::{AgentContext, Candidate};
use crate::schema::{workspace_agents, workspace_builds, workspace_resources, workspaces};
use crate::text::{text, Textual};
use crate::{now, Result, Store};

/// Live agents, in the latest build of a live workspace: what both the exchange and the agent
/// API start from. "Latest build" is one primary-key probe of `workspaces` (its
/// `latest_build_id`), never a scan of builds. No join to `workspace_resources`: what the
/// exchange needs of the resource (its expectation) is on the agent's row, and at a million
/// agents that join was half the pages a lookup touched.
macro_rules! live_agents {
    () => {
        workspace_agents::table
            .inner_join(
                workspaces::table.on(workspaces::id
                    .eq(workspace_agents::workspace_id)
                    .and(workspaces::latest_build_id.eq(workspace_agents::build_id.nullable()))),
            )
            .filter(workspace_agents::deleted_at.is_null())
            .filter(workspaces::deleted_at.is_null())
    };
}
#[cfg(feature = "testing")]
pub(crate) use live_agents;

/// The candidate query (DESIGN.md step 3): live root agents with this instance ID and auth
/// method, in the latest build of a live workspace. Driven by the partial index
/// `workspace_agents_instance`; the latest-build test is one primary-key probe of `workspaces`.
macro_rules! candidates_query {
    ($auth:expr, $instance_id:expr) => {
        live_agents!()
            .filter(workspace_agents::auth_instance_id.eq($instance_id))
            .filter(workspace_agents::parent_id.is_null())
            .filter(workspace_agents::auth.eq(text($auth)))
            .select(candidate_columns!())
    };
}

/// The candidate query for several instance IDs at once (any auth method: the caller picks),
/// each row with its instance ID, ordered as [`candidates_query`] orders, by instance first.
macro_rules! candidates_batch_query {
    ($instance_ids:expr) => {
        live_agents!()
            .filter(workspace_agents::auth_instance_id.eq_any($instance_ids))
            .filter(workspace_agents::parent_id.is_null())
            .select((workspace_agents::auth_instance_id, candidate_columns!()))
            .order((
                workspace_agents::auth_instance_id,
                workspace_agents::name,
                workspaces::name,
            ))
    };
}
#[cfg(feature = "testing")]
pub(crate) use candidates_batch_query;

/// The columns a [`Candidate`] is read from.
macro_rules! candidate_columns {
    () => {
        (
            workspace_agents::id,
            workspace_agents::name,
            workspace_agents::auth,
            workspaces::id,
            workspaces::name,
            workspace_agents::session_generation,
            workspace_agents::agent_public_key,
            workspace_agents::require_agent_key,
            workspace_agents::expect_resource,
            workspace_agents::expect_provider,
            workspace_agents::expect_account,
            workspace_agents::expect_location,
        )
    };
}
#[cfg(feature = "testing")]
pub(crate) use candidate_columns;
#[cfg(feature = "testing")]
pub(crate) use candidates_query;

/// Live agents joined with what the agent API reports about them; the caller adds the filter
/// that identifies the agent (session or static token).
macro_rules! agent_context_query {
    () => {
        live_agents!()
            .inner_join(
                workspace_builds::table.on(workspace_builds::id.eq(workspace_agents::build_id)),
            )
            .inner_join(
                workspace_resources::table
                    .on(workspace_resources::id.eq(workspace_agents::resource_id)),
            )
            .select((
                workspace_agents::id,
                workspace_agents::name,
                workspaces::id,
                workspaces::name,
                workspace_builds::build_number,
                workspace_resources::name,
                workspace_resources::resource_type,
            ))
    };
}

diesel::define_sql_function! {
    /// SQL `COALESCE` for nullable timestamps.
    fn coalesce(x: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>, y: diesel::sql_types::Nullable<diesel::sql_types::Timestamp>) -> diesel::sql_types::Nullable<diesel::sql_types::Timestamp>;
}

diesel::define_sql_function! {
    /// SQL `COALESCE` for nullable byte strings.
    #[sql_name = "COALESCE"]
    fn coalesce_bytes(x: diesel::sql_types::Nullable<diesel::sql_types::Binary>, y: diesel::sql_types::Nullable<diesel::sql_types::Binary>) -> diesel::sql_types::Nullable<diesel::sql_types::Binary>;
}

impl Store {
    /// The candidates for an exchange, in ONE statement: live root agents with this instance ID
    /// and auth method whose build is the latest build of a live workspace, sorted by name (then
    /// workspace). The policy narrows them by the requested name.
    ///
    /// Concurrent exchanges share the statement (group commit): a lone lookup runs this query
    /// as it is; two or more waiting at once are answered by one statement for all their
    /// instance IDs.
    pub async fn candidates(&self, auth: AgentAuth, instance_id: &str) -> Result<Vec<Candidate>> {
        self.batched(|i| &i.lookups, (auth, instance_id.to_owned()))
            .await
    }

    /// Statements sent for candidate lookups since the store was created.
    pub fn candidate_batches(&self) -> u64 {
        self.inner.lookups.batches()
    }

    async fn candidates_of_one(
        &self,
        auth: AgentAuth,
        instance_id: &str,
    ) -> Result<Vec<Candidate>> {
        with_conn!(self, |conn| {
            Ok(candidates_query!(auth, instance_id)
                .order((workspace_agents::name, workspaces::name))
                .load(conn)
                .await?)
        })
    }

    /// Binds `public_key` to an agent that has no key yet, in ONE statement; an agent that has
    /// one keeps it. Returns the key bound once the statement has run (`public_key` when this call
    /// bound it or it was already bound to the same key, another key when someone bound first),
    /// or `None` if the agent is gone.
    ///
    /// Two concurrent binders end with exactly one key: each UPDATE sees the row as the other
    /// left it (PostgreSQL re-reads a row it waited on; SQLite has one writer), so the loser's
    /// `COALESCE` keeps the winner's key and returns it.
    ///
    /// Every change of an agent's binding goes through this method or
    /// [`Store::reset_agent_key`].
    pub async fn bind_agent_key(
        &self,
        agent_id: Uuid,
        public_key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        let at = now();
        with_conn!(self, |conn| {
            let bound: Option<Option<Vec<u8>>> = diesel::update(
                workspace_agents::table
                    .find(text(agent_id))
                    .filter(workspace_agents::deleted_at.is_null()),
            )
            .set((
                workspace_agents::agent_public_key.eq(coalesce_bytes(
                    workspace_agents::agent_public_key,
                    Some(public_key),
                )),
                workspace_agents::agent_key_bound_at
                    .eq(coalesce(workspace_agents::agent_key_bound_at, Some(at))),
            ))
            .returning(workspace_agents::agent_public_key)
            .get_result(conn)
            .await
            .optional()?;
            Ok(bound.flatten())
        })
    }

    /// Forgets the key bound to agent `agent` of the latest build of live workspace `workspace`
    /// and ends the agent's sessions, in one statement; its next signed exchange binds again.
    /// Returns false if there is no such agent.
    ///
    /// Ending the sessions matters when the binding was wrong (a squatter bound first): whoever
    /// holds a session under the old binding must prove itself again.
    pub async fn reset_agent_key(&self, workspace: &str, agent: &str) -> Result<bool> {
        with_conn!(self, |conn| {
            let latest = workspaces::table
                .filter(workspaces::name.eq(workspace))
                .filter(workspaces::deleted_at.is_null())
                .select(workspaces::latest_build_id);
            let changed: Vec<Textual<Uuid>> = diesel::update(
                workspace_agents::table
                    .filter(workspace_agents::name.eq(agent))
                    .filter(workspace_agents::deleted_at.is_null())
                    .filter(workspace_agents::build_id.nullable().eq_any(latest)),
            )
            .set((
                workspace_agents::agent_public_key.eq(None::<Vec<u8>>),
                workspace_agents::agent_key_bound_at.eq(None::<NaiveDateTime>),
                workspace_agents::session_generation.eq(workspace_agents::session_generation + 1),
            ))
            .returning(workspace_agents::workspace_id)
            .get_results(conn)
            .await?;
            Ok(changed.into_iter().next().map(|w| w.0))
        })
        .map(|ws| self.invalidated(ws).is_some())
    }

    /// The agent a static agent token (by hash) belongs to, if it is live. One statement.
    pub async fn token_agent(&self, token_hash: &[u8]) -> Result<Option<AgentContext>> {
        with_conn!(self, |conn| {
            Ok(agent_context_query!()
                .filter(workspace_agents::auth_token_hash.eq(token_hash))
                .first(conn)
                .await
                .optional()?)
        })
    }

    /// The agent behind a signed session token, if it is live, in the latest build of a live
    /// workspace, and its session generation still matches. One primary-key read.
    pub async fn session_agent_by_id(
        &self,
        agent_id: Uuid,
        session_generation: i32,
    ) -> Result<Option<AgentContext>> {
        with_conn!(self, |conn| {
            Ok(agent_context_query!()
                .filter(workspace_agents::id.eq(text(agent_id)))
                .filter(workspace_agents::session_generation.eq(session_generation))
                .first(conn)
                .await
                .optional()?)
        })
    }

    /// Revokes every signed session of an agent by bumping its session generation. Returns
    /// false if the agent does not exist.
    pub async fn revoke_agent_sessions(&self, agent_id: Uuid) -> Result<bool> {
        with_conn!(self, |conn| {
            let ws: Option<Textual<Uuid>> =
                diesel::update(workspace_agents::table.find(text(agent_id)))
                    .set(
                        workspace_agents::session_generation
                            .eq(workspace_agents::session_generation + 1),
                    )
                    .returning(workspace_agents::workspace_id)
                    .get_result(conn)
                    .await
                    .optional()?;
            Ok(ws.map(|w| w.0))
        })
        .map(|ws| self.invalidated(ws).is_some())
    }

    /// Voids what this process cached about `workspace`'s agents (other processes learn of the
    /// change from the database: migration `liveness`). Returns its argument.
    pub(crate) fn invalidated(&self, workspace: Option<Uuid>) -> Option<Uuid> {
        if let Some(ws) = workspace {
            self.inner.liveness.invalidate(ws);
        }
        workspace
    }

    /// Whether the agent named by a signed session token at `generation` may use it now: live,
    /// in the latest build of a live workspace, at that session generation. Answered from the
    /// liveness cache; a miss is one primary-key read, whose answer is cached.
    pub async fn session_live(&self, agent_id: Uuid, generation: i32) -> Result<bool> {
        Ok(self
            .live_agent(agent_id)
            .await?
            .is_some_and(|l| l.session_generation == generation))
    }

    /// The liveness of `agent_id` (cache, else one read). Both answers are cached: "not live"
    /// is final (see `Liveness::gone`).
    pub async fn live_agent(&self, agent_id: Uuid) -> Result<Option<Live>> {
        let cache = &self.inner.liveness;
        crate::liveness::start_watch(cache, &self.inner.config);
        if let Some(l) = cache.agent(agent_id) {
            return Ok(Some(l));
        }
        if cache.gone(agent_id) {
            return Ok(None);
        }
        cache.miss();
        let read_at = cache.begin_read();
        let row: Option<(Textual<Uuid>, i32)> = with_conn!(self, |conn| {
            live_agents!()
                .filter(workspace_agents::id.eq(text(agent_id)))
                .select((workspaces::id, workspace_agents::session_generation))
                .first(conn)
                .await
                .optional()?
        });
        let Some((ws, generation)) = row else {
            cache.insert_gone(agent_id, read_at);
            return Ok(None);
        };
        let live = Live {
            workspace_id: ws.0,
            session_generation: generation,
        };
        cache.insert(agent_id, live, read_at, None);
        Ok(Some(live))
    }

    /// The live agent a static agent token (by its SHA-256) belongs to: from the liveness
    /// cache, else one read by the token index, whose answer is cached (a "no" only for a token
    /// the cache saw live).
    pub async fn token_live(&self, token_hash: &[u8; 32]) -> Result<Option<Uuid>> {
        let cache = &self.inner.liveness;
        crate::liveness::start_watch(cache, &self.inner.config);
        if let Some((agent, _)) = cache.token(token_hash) {
            return Ok(Some(agent));
        }
        if cache.token_gone(token_hash) {
            return Ok(None);
        }
        cache.miss();
        let read_at = cache.begin_read();
        let row: Option<(Textual<Uuid>, Textual<Uuid>, i32)> = with_conn!(self, |conn| {
            live_agents!()
                .filter(workspace_agents::auth_token_hash.eq(&token_hash[..]))
                .select((
                    workspace_agents::id,
                    workspaces::id,
                    workspace_agents::session_generation,
                ))
                .first(conn)
                .await
                .optional()?
        });
        let Some((agent, ws, generation)) = row else {
            // A token once seen live names one agent for good (the token index is unique over
            // every agent row); an unknown one is never remembered, so guesses cost no memory.
            if let Some(agent) = cache.token_agent(token_hash) {
                cache.insert_gone(agent, read_at);
            }
            return Ok(None);
        };
        let live = Live {
            workspace_id: ws.0,
            session_generation: generation,
        };
        cache.insert(agent.0, live, read_at, Some(*token_hash));
        Ok(Some(agent.0))
    }

    /// The liveness cache's counters.
    pub fn liveness_stats(&self) -> CacheStats {
        self.inner.liveness.stats()
    }
}

/// The exchange's candidate lookups, group-committed.
pub(crate) struct Lookups;

impl Kind for Lookups {
    type Request = (AgentAuth, String);
    type Response = Vec<Candidate>;
    const MAX: usize = 256;
    const LINGER: Option<(std::time::Duration, usize)> = None;

    async fn run(store: &Store, requests: &[Self::Request]) -> Result<Vec<Vec<Candidate>>> {
        if let [(auth, instance_id)] = requests {
            return Ok(vec![store.candidates_of_one(*auth, instance_id).await?]);
        }
        let mut ids: Vec<&str> = requests.iter().map(|(_, i)| i.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        // The same query for every instance ID at once, ordered as the single query orders
        // (then split by instance, which keeps that order).
        let rows: Vec<(Option<String>, Candidate)> = with_conn!(store, |conn| {
            candidates_batch_query!(&ids).load(conn).await?
        });
        let mut by_instance: HashMap<&str, Vec<&Candidate>> = HashMap::new();
        for (instance, c) in &rows {
            if let Some(i) = instance {
                by_instance.entry(i.as_str()).or_default().push(c);
            }
        }
        Ok(requests
            .iter()
            .map(|(auth, instance_id)| {
                by_instance
                    .get(instance_id.as_str())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.auth == *auth)
                    .map(|c| (*c).clone())
                    .collect()
            })
            .collect())
    }
}

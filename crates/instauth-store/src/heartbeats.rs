//! Heartbeats by group commit: each request queues its update and waits for the statement that
//! carries it, so "recorded" still means committed; one writer task sends ONE statement per
//! batch of everything queued meanwhile (`UPDATE … FROM unnest(…)` on PostgreSQL, `UPDATE … FROM
//! json_each(…)` on SQLite; the statement text is the same for any batch size).
//!
//! The batch window adapts to load: an idle writer takes a lone heartbeat at once (no added
//! latency), while one statement runs the next batch gathers, and when several were waiting the
//! writer gathers up to 1 ms more (or 64 heartbeats), so a busy server sends one statement per
//! dozens of heartbeats. Within a batch
//! the last heartbeat of an agent wins, so a change to `shutting_down` or `off` sent after
//! `ready` is what is stored.
//!
//! What heartbeats write lives in `agent_heartbeats`, one narrow row per agent made with its
//! build, rather than in the wide agent row: a fleet's heartbeat state stays in the database's
//! cache (PostgreSQL: about 110 bytes an agent with its uuid key's index, against about 450 in
//! `workspace_agents`). Its key is a `uuid` on PostgreSQL and text on SQLite, so its statements
//! are written here per backend rather than through the shared diesel schema.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment};
use diesel::sql_types::{Array, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;
use diesel_async::RunQueryDsl;
use instauth_types::LifecycleState;
use uuid::Uuid;

use crate::batch::Kind;
use crate::text::Textual;
use crate::{now, Backend, Result, Store, StoreError};

/// Most heartbeats in one statement (SQLite's JSON text and PostgreSQL's arrays take any
/// number; this bounds one statement's time and memory).
pub const MAX_BATCH: usize = 4096;

/// One batch's statement.
struct BatchUpdate<'a> {
    /// Agent ids (PostgreSQL).
    ids: &'a [Uuid],
    /// Their lifecycle states (PostgreSQL).
    states: &'a [&'static str],
    /// `[[id, state], …]` (SQLite).
    json: &'a str,
    at: NaiveDateTime,
}

/// Makes the heartbeat rows of one build's agents: `created`, never connected.
pub(crate) struct NewHeartbeatRows<'a> {
    /// The build, as stored.
    pub(crate) build_id: &'a str,
}

/// The heartbeat state of some agents: (id, lifecycle state, first and last connection).
pub(crate) struct HeartbeatStates<'a> {
    /// The agents (PostgreSQL).
    ids: &'a [Uuid],
    /// `[id, …]` (SQLite).
    json: &'a str,
}

/// A row of [`HeartbeatStates`].
pub(crate) type HeartbeatState = (
    Textual<Uuid>,
    Textual<LifecycleState>,
    Option<NaiveDateTime>,
    Option<NaiveDateTime>,
);

static_query_id!(BatchUpdate, NewHeartbeatRows, HeartbeatStates);

impl QueryFragment<Pg> for BatchUpdate<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE agent_heartbeats AS h SET lifecycle_state = v.state, \
             first_connected_at = COALESCE(h.first_connected_at, ",
        );
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql("), last_connected_at = ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(" FROM unnest(");
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(self.ids)?;
        out.push_sql("::uuid[], ");
        out.push_bind_param::<Array<Text>, _>(self.states)?;
        out.push_sql("::text[]) AS v(id, state) WHERE h.agent_id = v.id");
        Ok(())
    }
}

impl QueryFragment<Sqlite> for BatchUpdate<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE agent_heartbeats SET lifecycle_state = v.state, \
             first_connected_at = COALESCE(agent_heartbeats.first_connected_at, ",
        );
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql("), last_connected_at = ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(" FROM (SELECT value ->> 0 AS id, value ->> 1 AS state FROM json_each(");
        out.push_bind_param::<Text, _>(self.json)?;
        out.push_sql(")) AS v WHERE agent_heartbeats.agent_id = v.id");
        Ok(())
    }
}

impl QueryFragment<Pg> for NewHeartbeatRows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO agent_heartbeats (agent_id, lifecycle_state) \
             SELECT id::uuid, ",
        );
        out.push_bind_param::<Text, _>(LifecycleState::Created.as_str())?;
        out.push_sql(" FROM workspace_agents WHERE build_id = ");
        out.push_bind_param::<Text, _>(self.build_id)?;
        Ok(())
    }
}

impl QueryFragment<Sqlite> for NewHeartbeatRows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("INSERT INTO agent_heartbeats (agent_id, lifecycle_state) SELECT id, ");
        out.push_bind_param::<Text, _>(LifecycleState::Created.as_str())?;
        out.push_sql(" FROM workspace_agents WHERE build_id = ");
        out.push_bind_param::<Text, _>(self.build_id)?;
        Ok(())
    }
}

impl Query for HeartbeatStates<'_> {
    type SqlType = (Text, Text, Nullable<Timestamp>, Nullable<Timestamp>);
}

impl QueryFragment<Pg> for HeartbeatStates<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "SELECT agent_id::text, lifecycle_state, first_connected_at, last_connected_at \
             FROM agent_heartbeats WHERE agent_id = ANY(",
        );
        out.push_bind_param::<Array<diesel::sql_types::Uuid>, _>(self.ids)?;
        out.push_sql(")");
        Ok(())
    }
}

impl QueryFragment<Sqlite> for HeartbeatStates<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "SELECT agent_id, lifecycle_state, first_connected_at, last_connected_at \
             FROM agent_heartbeats WHERE agent_id IN (SELECT value FROM json_each(",
        );
        out.push_bind_param::<Text, _>(self.json)?;
        out.push_sql("))");
        Ok(())
    }
}

impl<'a> HeartbeatStates<'a> {
    /// The statement for `ids`; `json` is their JSON array, which SQLite's form binds.
    pub(crate) fn new(ids: &'a [Uuid], json: &'a str) -> Self {
        HeartbeatStates { ids, json }
    }
}

/// Writes one batch (deduplicated: the last heartbeat of an agent wins) in one statement.
async fn write(store: &Store, batch: &[(Uuid, LifecycleState)], at: NaiveDateTime) -> Result<()> {
    match &store.inner.backend {
        Backend::Postgres(pool) => {
            let mut conn = checkout!(pool);
            let ids: Vec<Uuid> = batch.iter().map(|(a, _)| *a).collect();
            let states: Vec<&'static str> = batch.iter().map(|(_, s)| s.as_str()).collect();
            BatchUpdate {
                ids: &ids,
                states: &states,
                json: "",
                at,
            }
            .execute(&mut conn)
            .await?;
        }
        Backend::Sqlite(pool) => {
            let mut conn = checkout!(pool);
            let rows: Vec<(String, &str)> = batch
                .iter()
                .map(|(a, s)| (a.to_string(), s.as_str()))
                .collect();
            let json = serde_json::to_string(&rows)
                .map_err(|e| StoreError::Corrupt(format!("heartbeat batch: {e}")))?;
            BatchUpdate {
                ids: &[],
                states: &[],
                json: &json,
                at,
            }
            .execute(&mut conn)
            .await?;
        }
    }
    Ok(())
}

/// Heartbeats, group-committed.
pub(crate) struct Heartbeats;

impl Kind for Heartbeats {
    type Request = (Uuid, LifecycleState);
    type Response = ();
    const MAX: usize = MAX_BATCH;
    // Under load, up to 1 ms or 64 heartbeats more per statement.
    const LINGER: Option<(Duration, usize)> = Some((Duration::from_millis(1), 64));

    async fn run(store: &Store, requests: &[Self::Request]) -> Result<Vec<()>> {
        let mut last: HashMap<Uuid, usize> = HashMap::with_capacity(requests.len());
        let mut batch: Vec<(Uuid, LifecycleState)> = Vec::with_capacity(requests.len());
        for &(agent, state) in requests {
            match last.get(&agent) {
                Some(&i) => batch[i].1 = state,
                None => {
                    last.insert(agent, batch.len());
                    batch.push((agent, state));
                }
            }
        }
        write(store, &batch, now()).await?;
        Ok(vec![(); requests.len()])
    }
}

impl Store {
    /// Records a heartbeat (lifecycle state, first and last connection time) and returns once
    /// the statement carrying it has committed. Concurrent heartbeats share one statement.
    pub async fn record_heartbeat(&self, agent_id: Uuid, state: LifecycleState) -> Result<()> {
        self.batched(|i| &i.heartbeats, (agent_id, state)).await
    }

    /// Heartbeat statements sent since the store was created (one per batch).
    pub fn heartbeat_batches(&self) -> u64 {
        self.inner.heartbeats.batches()
    }
}

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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Array, Text, Timestamp};
use diesel::sqlite::Sqlite;
use diesel::QueryResult;
use diesel_async::RunQueryDsl;
use instauth_types::LifecycleState;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{now, Backend, Inner, Result, Store, StoreError};

/// Most heartbeats in one statement (SQLite's JSON text and PostgreSQL's arrays take any
/// number; this bounds one statement's time and memory).
pub const MAX_BATCH: usize = 4096;
/// Under load, a batch waits this long at most for more heartbeats ...
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// ... or until it holds this many.
const BUSY_BATCH: usize = 64;
/// Heartbeats waiting beyond this make callers wait to queue (backpressure, not memory).
const QUEUE: usize = 65_536;

struct Pending {
    agent: Uuid,
    state: LifecycleState,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// The queue of one store (started on first use).
#[derive(Default)]
pub(crate) struct Queue {
    tx: OnceLock<mpsc::Sender<Pending>>,
    batches: Arc<AtomicU64>,
}

/// One batch's statement. Its text is fixed whatever the batch size, so it is prepared once per
/// connection and cached (a `sql_query` would be parsed and planned again every time).
struct BatchUpdate<'a> {
    /// Agent ids (PostgreSQL).
    ids: &'a [String],
    /// Their lifecycle states (PostgreSQL).
    states: &'a [&'static str],
    /// `[[id, state], …]` (SQLite).
    json: &'a str,
    at: NaiveDateTime,
}

/// The statement's identity for the prepared-statement cache: the same for every batch.
struct BatchUpdateId;

impl QueryId for BatchUpdate<'_> {
    type QueryId = BatchUpdateId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for BatchUpdate<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE workspace_agents AS a SET lifecycle_state = v.state, \
             first_connected_at = COALESCE(a.first_connected_at, ",
        );
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql("), last_connected_at = ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(" FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(self.ids)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(self.states)?;
        out.push_sql("::text[]) AS v(id, state) WHERE a.id = v.id");
        Ok(())
    }
}

impl QueryFragment<Sqlite> for BatchUpdate<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE workspace_agents SET lifecycle_state = v.state, \
             first_connected_at = COALESCE(workspace_agents.first_connected_at, ",
        );
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql("), last_connected_at = ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(" FROM (SELECT value ->> 0 AS id, value ->> 1 AS state FROM json_each(");
        out.push_bind_param::<Text, _>(self.json)?;
        out.push_sql(")) AS v WHERE workspace_agents.id = v.id");
        Ok(())
    }
}

/// Writes one batch (deduplicated: the last heartbeat of an agent wins) in one statement.
async fn write(store: &Store, batch: &[(Uuid, LifecycleState)], at: NaiveDateTime) -> Result<()> {
    match &store.inner.backend {
        Backend::Postgres(pool) => {
            let mut conn = checkout!(pool);
            let ids: Vec<String> = batch.iter().map(|(a, _)| a.to_string()).collect();
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

/// The writer: takes everything queued (up to [`MAX_BATCH`]), writes it, answers every waiter.
async fn writer(inner: Weak<Inner>, mut rx: mpsc::Receiver<Pending>, batches: Arc<AtomicU64>) {
    let mut queued = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut queued, MAX_BATCH).await > 0 {
        // More than one was waiting: the server is busy, so gather a little longer and let
        // one statement carry more (fewer transactions, less database CPU per heartbeat). Alone,
        // a heartbeat is written at once.
        if queued.len() > 1 {
            let until = tokio::time::Instant::now() + LINGER;
            while queued.len() < BUSY_BATCH {
                let room = MAX_BATCH - queued.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut queued, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let store = Store { inner };
        let mut last: HashMap<Uuid, usize> = HashMap::with_capacity(queued.len());
        let mut batch: Vec<(Uuid, LifecycleState)> = Vec::with_capacity(queued.len());
        for p in &queued {
            match last.get(&p.agent) {
                Some(&i) => batch[i].1 = p.state,
                None => {
                    last.insert(p.agent, batch.len());
                    batch.push((p.agent, p.state));
                }
            }
        }
        let result = write(&store, &batch, now()).await.map_err(Arc::new);
        batches.fetch_add(1, Ordering::Relaxed);
        for p in queued.drain(..) {
            // A caller that stopped waiting (its client went away) is fine: the write stands.
            let _ = p.done.send(result.clone());
        }
    }
}

/// The error a waiter reports for a failed batch: unavailable stays unavailable (503 with
/// Retry-After), anything else is a database error.
fn shared(e: &StoreError) -> StoreError {
    if e.is_unavailable() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Batch(e.to_string())
    }
}

impl Store {
    /// Records a heartbeat (lifecycle state, first and last connection time) and returns once
    /// the statement carrying it has committed. Concurrent heartbeats share one statement.
    pub async fn record_heartbeat(&self, agent_id: Uuid, state: LifecycleState) -> Result<()> {
        let q = &self.inner.heartbeats;
        let tx = q.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(writer(Arc::downgrade(&self.inner), rx, q.batches.clone()));
            tx
        });
        let (done, wait) = oneshot::channel();
        let gone = || StoreError::Unavailable("the heartbeat writer stopped".into());
        tx.send(Pending {
            agent: agent_id,
            state,
            done,
        })
        .await
        .map_err(|_| gone())?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(shared(&e)),
            Err(_) => Err(gone()),
        }
    }

    /// Heartbeat statements sent since the store was created (one per batch).
    pub fn heartbeat_batches(&self) -> u64 {
        AtomicU64::load(&self.inner.heartbeats.batches, Ordering::Relaxed)
    }
}

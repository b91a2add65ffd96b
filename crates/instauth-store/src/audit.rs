//! The audit log: batched inserts from the audit writer, newest-first listing and an `after`
//! cursor (oldest first) for the admin API.

use chrono::NaiveDateTime;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment};
use diesel::sql_types::{Array, Integer, Nullable, Text, Timestamp};
use diesel_async::RunQueryDsl;
use instauth_types::Provider;

use crate::insert::{insert_many, InsertMany};
use crate::model::{AuditRecord, NewAuditRecord};
use crate::schema::audit_log;
use crate::text::Textual;
use crate::{Backend, Result, Store};
use uuid::Uuid;

#[derive(Insertable)]
#[diesel(table_name = audit_log, treat_none_as_default_value = false)]
struct AuditInsert {
    time: NaiveDateTime,
    #[diesel(serialize_as = Textual<Provider>)]
    provider: Provider,
    instance_id: String,
    agent_name: String,
    outcome: String,
    agent_id: Option<String>,
    remote_addr: String,
    reason: Option<String>,
    count: i32,
    #[diesel(serialize_as = Textual<Uuid>)]
    uid: Uuid,
}

// A batch retried after a lost connection may already be stored: its uids say so.
insert_many!(AuditInsert, audit_log::table, ignore_conflicts);

/// A batch of records as PostgreSQL takes it: one array per column, in one statement whose
/// text is the same for any batch size, so it is prepared once per connection. (A multi-row
/// `VALUES` list is a new statement for every batch size, parsed and planned every time.)
#[derive(Default)]
struct AuditColumns<'a> {
    time: Vec<NaiveDateTime>,
    provider: Vec<Textual<Provider>>,
    instance_id: Vec<&'a str>,
    agent_name: Vec<&'a str>,
    outcome: Vec<&'a str>,
    agent_id: Vec<Option<Textual<Uuid>>>,
    remote_addr: Vec<&'a str>,
    reason: Vec<Option<&'a str>>,
    count: Vec<i32>,
    uid: Vec<Textual<Uuid>>,
}

impl<'a> AuditColumns<'a> {
    fn new(records: &'a [NewAuditRecord]) -> Self {
        let mut c = AuditColumns::default();
        for r in records {
            c.time.push(r.time);
            c.provider.push(Textual(r.provider));
            c.instance_id.push(&r.instance_id);
            c.agent_name.push(&r.agent_name);
            c.outcome.push(&r.outcome);
            c.agent_id.push(r.agent_id.map(Textual));
            c.remote_addr.push(&r.remote_addr);
            c.reason.push(r.reason.as_deref());
            c.count.push(r.count);
            c.uid.push(Textual(r.uid));
        }
        c
    }
}

static_query_id!(AuditColumns);

impl QueryFragment<Pg> for AuditColumns<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO audit_log (time, provider, instance_id, agent_name, outcome, agent_id, \
             remote_addr, reason, count, uid) SELECT * FROM unnest(",
        );
        out.push_bind_param::<Array<Timestamp>, _>(&self.time)?;
        out.push_sql("::timestamp[], ");
        out.push_bind_param::<Array<Text>, _>(&self.provider)?;
        for texts in [&self.instance_id, &self.agent_name, &self.outcome] {
            out.push_sql("::text[], ");
            out.push_bind_param::<Array<Text>, _>(texts)?;
        }
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.agent_id)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.remote_addr)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.reason)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Integer>, _>(&self.count)?;
        out.push_sql("::int4[], ");
        out.push_bind_param::<Array<Text>, _>(&self.uid)?;
        out.push_sql("::text[]) ON CONFLICT DO NOTHING");
        Ok(())
    }
}

impl Store {
    /// Writes audit records: one statement on PostgreSQL, as few as the bind limit allows on
    /// SQLite.
    pub async fn insert_audit(&self, records: &[NewAuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        match &self.inner.backend {
            Backend::Postgres(pool) => {
                let mut conn = checkout!(pool);
                AuditColumns::new(records).execute(&mut conn).await?;
            }
            Backend::Sqlite(pool) => {
                let rows: Vec<AuditInsert> = records
                    .iter()
                    .map(|r| AuditInsert {
                        time: r.time,
                        provider: r.provider,
                        instance_id: r.instance_id.clone(),
                        agent_name: r.agent_name.clone(),
                        outcome: r.outcome.clone(),
                        agent_id: r.agent_id.map(|id| id.hyphenated().to_string()),
                        remote_addr: r.remote_addr.clone(),
                        reason: r.reason.clone(),
                        count: r.count,
                        uid: r.uid,
                    })
                    .collect();
                let mut pooled = checkout!(pool);
                let conn: &mut crate::SqliteConn = &mut pooled;
                conn.insert_many(rows).await?;
            }
        }
        Ok(())
    }

    /// Deletes at most `limit` of the oldest records older than `before`; returns how many.
    /// Small batches keep each statement (and SQLite's write lock) short.
    pub async fn delete_audit_before(&self, before: NaiveDateTime, limit: i64) -> Result<usize> {
        with_conn!(self, |conn| {
            // The subquery reads the same table: diesel needs it under another name.
            let older = diesel::alias!(audit_log as older);
            let oldest = older
                .filter(older.field(audit_log::time).lt(before))
                .order(older.field(audit_log::id).asc())
                .limit(limit.max(0))
                .select(older.field(audit_log::id));
            Ok(diesel::delete(audit_log::table)
                .filter(audit_log::id.eq_any(oldest))
                .execute(conn)
                .await?)
        })
    }

    /// The newest `limit` audit records, newest first.
    pub async fn list_audit(&self, limit: i64) -> Result<Vec<AuditRecord>> {
        self.audit_page(limit, None).await
    }

    /// At most `limit` audit records with an id above `after`, oldest first: a cursor for
    /// following the log (ids only grow).
    pub async fn list_audit_after(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        self.audit_page(limit, Some(after)).await
    }

    async fn audit_page(&self, limit: i64, after: Option<i64>) -> Result<Vec<AuditRecord>> {
        with_conn!(self, |conn| {
            let query = audit_log::table.limit(limit.max(0)).select((
                audit_log::id,
                (
                    audit_log::time,
                    audit_log::provider,
                    audit_log::instance_id,
                    audit_log::agent_name,
                    audit_log::outcome,
                    audit_log::agent_id,
                    audit_log::remote_addr,
                    audit_log::reason,
                    audit_log::count,
                    audit_log::uid,
                ),
            ));
            Ok(match after {
                None => query.order(audit_log::id.desc()).load(conn).await?,
                Some(after) => {
                    query
                        .filter(audit_log::id.gt(after))
                        .order(audit_log::id.asc())
                        .load(conn)
                        .await?
                }
            })
        })
    }
}

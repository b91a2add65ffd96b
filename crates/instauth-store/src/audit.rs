//! The audit log: batched inserts from the audit writer, newest-first listing and an `after`
//! cursor (oldest first) for the admin API.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use instauth_types::Provider;

use crate::insert::{insert_many, InsertMany};
use crate::model::{AuditRecord, NewAuditRecord};
use crate::schema::audit_log;
use crate::text::Textual;
use crate::{Result, Store};

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
}

insert_many!(AuditInsert, audit_log::table);

impl Store {
    /// Writes audit records in as few statements as the bind limits allow.
    pub async fn insert_audit(&self, records: &[NewAuditRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
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
            })
            .collect();
        with_conn!(self, |conn| Ok(conn.insert_many(rows).await?))
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

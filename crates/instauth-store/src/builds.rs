//! Creating builds: the workspace (created on first use), the build row, its resources and
//! agents with their heartbeat rows, and the switch of the workspace's latest build, in one
//! transaction. A new build's agents start with no agent key bound.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use instauth_types::{AgentAuth, Provider};
use uuid::Uuid;

use crate::heartbeats::NewHeartbeatRows;
use crate::insert::{insert_many, InsertMany};
use crate::model::{CreatedAgent, CreatedBuild};
use crate::schema::{workspace_agents, workspace_builds, workspace_resources, workspaces};
use crate::text::{text, Textual};
use crate::validate::ValidBuild;
use crate::{now, Result, Store, StoreError};

#[derive(Insertable)]
#[diesel(table_name = workspace_agents, treat_none_as_default_value = false)]
struct AgentInsert {
    #[diesel(serialize_as = Textual<Uuid>)]
    id: Uuid,
    #[diesel(serialize_as = Textual<Uuid>)]
    resource_id: Uuid,
    #[diesel(serialize_as = Textual<Uuid>)]
    build_id: Uuid,
    #[diesel(serialize_as = Textual<Uuid>)]
    workspace_id: Uuid,
    parent_id: Option<String>,
    name: String,
    #[diesel(serialize_as = Textual<AgentAuth>)]
    auth: AgentAuth,
    auth_instance_id: Option<String>,
    auth_token_hash: Option<Vec<u8>>,
    created_at: NaiveDateTime,
    require_agent_key: bool,
    // The resource's expectation, copied (resources never change after their build).
    expect_resource: Option<String>,
    expect_provider: Option<Textual<Provider>>,
    expect_account: Option<String>,
    expect_location: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = workspace_resources, treat_none_as_default_value = false)]
struct ResourceInsert {
    #[diesel(serialize_as = Textual<Uuid>)]
    id: Uuid,
    #[diesel(serialize_as = Textual<Uuid>)]
    build_id: Uuid,
    name: String,
    resource_type: String,
    created_at: NaiveDateTime,
    expect_provider: Option<Textual<Provider>>,
    expect_account: Option<String>,
    expect_location: Option<String>,
}

insert_many!(AgentInsert, workspace_agents::table);
insert_many!(ResourceInsert, workspace_resources::table);

/// The rows of a build, agents in insertion order (parents before their sub-agents).
struct BuildRows {
    resources: Vec<ResourceInsert>,
    agents: Vec<AgentInsert>,
    created: Vec<CreatedAgent>,
}

fn build_rows(
    build: &ValidBuild,
    build_id: Uuid,
    workspace_id: Uuid,
    at: NaiveDateTime,
) -> BuildRows {
    let resource_ids: Vec<Uuid> = build.resources.iter().map(|_| Uuid::new_v4()).collect();
    let agent_ids: Vec<Uuid> = build.agents.iter().map(|_| Uuid::new_v4()).collect();
    let resources = build
        .resources
        .iter()
        .zip(&resource_ids)
        .map(|(r, &id)| ResourceInsert {
            id,
            build_id,
            name: r.name.clone(),
            resource_type: r.resource_type.clone(),
            created_at: at,
            expect_provider: r.expect.as_ref().map(|e| text(e.provider)),
            expect_account: r.expect.as_ref().and_then(|e| e.account.clone()),
            expect_location: r.expect.as_ref().and_then(|e| e.location.clone()),
        })
        .collect();
    let agents = build
        .insert_order
        .iter()
        .map(|&i| {
            let a = &build.agents[i];
            let resource = &build.resources[a.resource];
            let expect = resource.expect.as_ref();
            AgentInsert {
                id: agent_ids[i],
                resource_id: resource_ids[a.resource],
                build_id,
                workspace_id,
                parent_id: a.parent.map(|p| agent_ids[p].hyphenated().to_string()),
                name: a.name.clone(),
                auth: a.auth,
                auth_instance_id: a.instance_id.clone(),
                auth_token_hash: a.token_hash.clone(),
                created_at: at,
                require_agent_key: a.require_agent_key,
                expect_resource: expect.map(|_| resource.name.clone()),
                expect_provider: expect.map(|e| text(e.provider)),
                expect_account: expect.and_then(|e| e.account.clone()),
                expect_location: expect.and_then(|e| e.location.clone()),
            }
        })
        .collect();
    let created = build
        .agents
        .iter()
        .zip(&agent_ids)
        .map(|(a, &id)| CreatedAgent {
            id,
            name: a.name.clone(),
            auth: a.auth,
        })
        .collect();
    BuildRows {
        resources,
        agents,
        created,
    }
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Database(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _
        ))
    )
}

impl Store {
    /// Creates a build of its workspace (creating the workspace if needed) in one transaction;
    /// the new build becomes the latest, which retires the previous build's agents and ends their
    /// sessions (session checks require the latest build).
    pub async fn create_build(&self, build: &ValidBuild) -> Result<CreatedBuild> {
        // Two first builds of a new workspace can race on the unique name; the loser retries
        // once and then finds the winner's row.
        let created = match self.create_build_once(build).await {
            Err(e) if is_unique_violation(&e) => self.create_build_once(build).await,
            other => other,
        }?;
        self.invalidated(Some(created.workspace_id));
        Ok(created)
    }

    async fn create_build_once(&self, build: &ValidBuild) -> Result<CreatedBuild> {
        let at = now();
        let workspace = build.workspace();
        with_conn!(self, |conn| {
            conn.transaction::<_, StoreError, _>(async |conn| {
                // Write first: it takes the row lock (PostgreSQL) or the write lock (SQLite)
                // before anything is read, so concurrent builds of one workspace serialize.
                let existing: Option<Uuid> = diesel::update(
                    workspaces::table
                        .filter(workspaces::name.eq(workspace))
                        .filter(workspaces::deleted_at.is_null()),
                )
                .set(workspaces::name.eq(workspace))
                .returning(workspaces::id)
                .get_result::<Textual<Uuid>>(conn)
                .await
                .optional()?
                .map(Uuid::from);
                let workspace_id = match existing {
                    Some(id) => id,
                    None => {
                        let id = Uuid::new_v4();
                        diesel::insert_into(workspaces::table)
                            .values((
                                workspaces::id.eq(text(id)),
                                workspaces::name.eq(workspace),
                                workspaces::created_at.eq(at),
                            ))
                            .execute(conn)
                            .await?;
                        id
                    }
                };
                let last: Option<i32> = workspace_builds::table
                    .filter(workspace_builds::workspace_id.eq(text(workspace_id)))
                    .select(diesel::dsl::max(workspace_builds::build_number))
                    .get_result(conn)
                    .await?;
                let build_number = last.unwrap_or(0) + 1;
                let build_id = Uuid::new_v4();
                diesel::insert_into(workspace_builds::table)
                    .values((
                        workspace_builds::id.eq(text(build_id)),
                        workspace_builds::workspace_id.eq(text(workspace_id)),
                        workspace_builds::build_number.eq(build_number),
                        workspace_builds::created_at.eq(at),
                    ))
                    .execute(conn)
                    .await?;
                let rows = build_rows(build, build_id, workspace_id, at);
                conn.insert_many(rows.resources).await?;
                conn.insert_many(rows.agents).await?;
                NewHeartbeatRows {
                    build_id: &build_id.hyphenated().to_string(),
                }
                .execute(conn)
                .await?;
                diesel::update(workspaces::table.find(text(workspace_id)))
                    .set(workspaces::latest_build_id.eq(text(build_id)))
                    .execute(conn)
                    .await?;
                Ok(CreatedBuild {
                    workspace_id,
                    build_number,
                    agents: rows.created,
                })
            })
            .await
        })
    }
}

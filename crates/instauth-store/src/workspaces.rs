//! Workspaces for the admin API: listing, showing and deleting.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use instauth_types::{AgentAuth, LifecycleState, Provider};
use uuid::Uuid;

use crate::heartbeats::{HeartbeatState, HeartbeatStates};
use crate::model::{Agent, BoundKey, Resource, ResourceExpect, Workspace};
use crate::schema::{workspace_agents, workspace_builds, workspace_resources, workspaces};
use crate::text::{text, MaybeTextual, Textual};
use crate::{now, Result, Store, StoreError};

#[derive(Queryable)]
struct WorkspaceRow {
    #[diesel(deserialize_as = Textual<Uuid>)]
    id: Uuid,
    name: String,
    #[diesel(deserialize_as = Textual<Uuid>)]
    build_id: Uuid,
    build_number: i32,
}

#[derive(Queryable)]
struct ResourceRow {
    #[diesel(deserialize_as = Textual<Uuid>)]
    build_id: Uuid,
    name: String,
    resource_type: String,
    #[diesel(deserialize_as = MaybeTextual<Provider>)]
    expect_provider: Option<Provider>,
    expect_account: Option<String>,
    expect_location: Option<String>,
}

#[derive(Queryable)]
struct AgentRow {
    #[diesel(deserialize_as = Textual<Uuid>)]
    build_id: Uuid,
    #[diesel(deserialize_as = Textual<Uuid>)]
    id: Uuid,
    name: String,
    resource_name: String,
    #[diesel(deserialize_as = Textual<AgentAuth>)]
    auth: AgentAuth,
    instance_id: Option<String>,
    #[diesel(deserialize_as = MaybeTextual<Uuid>)]
    parent_id: Option<Uuid>,
    require_agent_key: bool,
    agent_public_key: Option<Vec<u8>>,
    agent_key_bound_at: Option<NaiveDateTime>,
}

impl Store {
    /// Live workspaces with their latest build's agents, by name.
    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>> {
        self.load_workspaces(None).await
    }

    /// One live workspace by name.
    pub async fn get_workspace(&self, name: &str) -> Result<Option<Workspace>> {
        Ok(self.load_workspaces(Some(name)).await?.into_iter().next())
    }

    /// Four statements whatever the number of workspaces: the workspaces with their latest
    /// build, then those builds' resources, then their agents, then the agents' heartbeat state.
    async fn load_workspaces(&self, name: Option<&str>) -> Result<Vec<Workspace>> {
        let (ws, resources, agents, states): (
            Vec<WorkspaceRow>,
            Vec<ResourceRow>,
            Vec<AgentRow>,
            Vec<HeartbeatState>,
        ) = with_conn!(self, |conn| {
            let mut q = workspaces::table
                .inner_join(
                    workspace_builds::table
                        .on(workspaces::latest_build_id.eq(workspace_builds::id.nullable())),
                )
                .filter(workspaces::deleted_at.is_null())
                .select((
                    workspaces::id,
                    workspaces::name,
                    workspace_builds::id,
                    workspace_builds::build_number,
                ))
                .order(workspaces::name)
                .into_boxed();
            if let Some(n) = name {
                q = q.filter(workspaces::name.eq(n));
            }
            let ws: Vec<WorkspaceRow> = q.load(conn).await?;
            let build_ids: Vec<_> = ws.iter().map(|w| text(w.build_id)).collect();
            let resources = workspace_resources::table
                .filter(workspace_resources::build_id.eq_any(&build_ids))
                .select((
                    workspace_resources::build_id,
                    workspace_resources::name,
                    workspace_resources::resource_type,
                    workspace_resources::expect_provider,
                    workspace_resources::expect_account,
                    workspace_resources::expect_location,
                ))
                .order(workspace_resources::name)
                .load(conn)
                .await?;
            let agents = workspace_agents::table
                .inner_join(
                    workspace_resources::table
                        .on(workspace_resources::id.eq(workspace_agents::resource_id)),
                )
                .filter(workspace_agents::build_id.eq_any(&build_ids))
                .filter(workspace_agents::deleted_at.is_null())
                .select((
                    workspace_agents::build_id,
                    workspace_agents::id,
                    workspace_agents::name,
                    workspace_resources::name,
                    workspace_agents::auth,
                    workspace_agents::auth_instance_id,
                    workspace_agents::parent_id,
                    workspace_agents::require_agent_key,
                    workspace_agents::agent_public_key,
                    workspace_agents::agent_key_bound_at,
                ))
                .order(workspace_agents::name)
                .load::<AgentRow>(conn)
                .await?;
            let ids: Vec<Uuid> = agents.iter().map(|a| a.id).collect();
            let json = serde_json::to_string(&ids)
                .map_err(|e| StoreError::Corrupt(format!("agent ids: {e}")))?;
            let states = HeartbeatStates::new(&ids, &json).load(conn).await?;
            (ws, resources, agents, states)
        });
        let states: HashMap<Uuid, _> = states
            .into_iter()
            .map(|(id, state, first, last)| (id.0, (state.0, first, last)))
            .collect();
        let names: HashMap<Uuid, &str> = agents.iter().map(|a| (a.id, a.name.as_str())).collect();
        Ok(ws
            .iter()
            .map(|w| Workspace {
                id: w.id,
                name: w.name.clone(),
                build_number: w.build_number,
                resources: resources
                    .iter()
                    .filter(|r| r.build_id == w.build_id)
                    .map(|r| Resource {
                        name: r.name.clone(),
                        resource_type: r.resource_type.clone(),
                        expect: r.expect_provider.map(|provider| ResourceExpect {
                            provider,
                            account: r.expect_account.clone(),
                            location: r.expect_location.clone(),
                        }),
                    })
                    .collect(),
                agents: agents
                    .iter()
                    .filter(|a| a.build_id == w.build_id)
                    .map(|a| {
                        let (lifecycle_state, first_connected_at, last_connected_at) = states
                            .get(&a.id)
                            .copied()
                            .unwrap_or((LifecycleState::Created, None, None));
                        Agent {
                            id: a.id,
                            name: a.name.clone(),
                            resource_name: a.resource_name.clone(),
                            auth: a.auth,
                            instance_id: a.instance_id.clone(),
                            parent: a
                                .parent_id
                                .and_then(|p| names.get(&p))
                                .map(|s| (*s).to_owned()),
                            lifecycle_state,
                            first_connected_at,
                            last_connected_at,
                            require_agent_key: a.require_agent_key,
                            agent_key: match (&a.agent_public_key, a.agent_key_bound_at) {
                                (Some(k), Some(at)) => Some(BoundKey {
                                    public_key: k.clone(),
                                    bound_at: at,
                                }),
                                _ => None,
                            },
                        }
                    })
                    .collect(),
            })
            .collect())
    }

    /// Deletes a workspace: its agents can no longer authenticate and their sessions end.
    /// Returns false if no live workspace has that name.
    pub async fn delete_workspace(&self, name: &str) -> Result<bool> {
        let at = now();
        with_conn!(self, |conn| {
            conn.transaction::<Option<Uuid>, StoreError, _>(async |conn| {
                let id: Option<Textual<Uuid>> = diesel::update(
                    workspaces::table
                        .filter(workspaces::name.eq(name))
                        .filter(workspaces::deleted_at.is_null()),
                )
                .set(workspaces::deleted_at.eq(at))
                .returning(workspaces::id)
                .get_result(conn)
                .await
                .optional()?;
                let Some(id) = id else { return Ok(None) };
                diesel::update(
                    workspace_agents::table
                        .filter(workspace_agents::workspace_id.eq(id))
                        .filter(workspace_agents::deleted_at.is_null()),
                )
                .set(workspace_agents::deleted_at.eq(at))
                .execute(conn)
                .await?;
                Ok(Some(id.0))
            })
            .await
        })
        .map(|deleted| self.invalidated(deleted).is_some())
    }
}

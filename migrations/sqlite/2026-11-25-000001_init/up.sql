-- SQLite dialect of migrations/postgres (same names). SQLite allows the forward reference
-- from workspaces to workspace_builds.
-- Ids are UUIDs in canonical text form and times are UTC `timestamp`s so that one diesel schema
-- serves both PostgreSQL and SQLite.
CREATE TABLE workspaces (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    latest_build_id TEXT REFERENCES workspace_builds (id),
    created_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
);
CREATE UNIQUE INDEX workspaces_name_live ON workspaces (name) WHERE deleted_at IS NULL;

CREATE TABLE workspace_builds (
    id TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    build_number INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (workspace_id, build_number)
);

CREATE TABLE workspace_resources (
    id TEXT PRIMARY KEY,
    build_id TEXT NOT NULL REFERENCES workspace_builds (id),
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX workspace_resources_build ON workspace_resources (build_id);

-- build_id and workspace_id repeat what resource_id implies: they let the candidate query test
-- "is this the latest build of a live workspace" with one primary-key probe of workspaces.
CREATE TABLE workspace_agents (
    id TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL REFERENCES workspace_resources (id),
    build_id TEXT NOT NULL REFERENCES workspace_builds (id),
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    parent_id TEXT REFERENCES workspace_agents (id),
    name TEXT NOT NULL,
    auth TEXT NOT NULL,
    auth_instance_id TEXT,
    auth_token_hash BLOB,
    lifecycle_state TEXT NOT NULL,
    first_connected_at TIMESTAMP,
    last_connected_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
);
CREATE INDEX workspace_agents_instance ON workspace_agents (auth_instance_id)
    WHERE parent_id IS NULL AND deleted_at IS NULL;
CREATE UNIQUE INDEX workspace_agents_token ON workspace_agents (auth_token_hash)
    WHERE auth_token_hash IS NOT NULL;
CREATE INDEX workspace_agents_build ON workspace_agents (build_id);

CREATE TABLE agent_sessions (
    token_hash BLOB PRIMARY KEY,
    agent_id TEXT NOT NULL REFERENCES workspace_agents (id),
    created_at TIMESTAMP NOT NULL,
    expires_at TIMESTAMP NOT NULL
);
CREATE INDEX agent_sessions_expiry ON agent_sessions (expires_at);
CREATE INDEX agent_sessions_agent ON agent_sessions (agent_id);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TIMESTAMP NOT NULL,
    provider TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    agent_name TEXT NOT NULL,
    outcome TEXT NOT NULL,
    agent_id TEXT,
    remote_addr TEXT NOT NULL
);

-- What heartbeats write (lifecycle state, first and last connection) moves out of the wide
-- agent row into a narrow table of its own, which heartbeats rewrite all day for every agent
-- (the PostgreSQL migration says why). Every agent gets its row when its build is created; a
-- heartbeat only updates, so one for an agent that does not exist changes nothing.
CREATE TABLE agent_heartbeats (
    agent_id TEXT PRIMARY KEY NOT NULL REFERENCES workspace_agents (id),
    first_connected_at TIMESTAMP,
    last_connected_at TIMESTAMP,
    lifecycle_state TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO agent_heartbeats (agent_id, first_connected_at, last_connected_at, lifecycle_state)
    SELECT id, first_connected_at, last_connected_at, lifecycle_state FROM workspace_agents;

ALTER TABLE workspace_agents DROP COLUMN lifecycle_state;
ALTER TABLE workspace_agents DROP COLUMN first_connected_at;
ALTER TABLE workspace_agents DROP COLUMN last_connected_at;

-- What heartbeats write (lifecycle state, first and last connection) moves out of the wide
-- agent row into a narrow table of its own. Heartbeats rewrite these rows all day, for every
-- agent: at about 70 bytes a row and a 16-byte uuid key, a fleet's heartbeat state (1 M agents:
-- about 110 MB with its index) stays in PostgreSQL's buffers, where the agent rows (about
-- 450 MB with their indexes at 1 M agents) did not. Every agent gets its row when its build is
-- created; a heartbeat only updates, so one for an agent that does not exist changes nothing.
-- No foreign key: the agent key is text, this one uuid, and agent rows are never deleted.
CREATE TABLE agent_heartbeats (
    agent_id UUID PRIMARY KEY,
    first_connected_at TIMESTAMP,
    last_connected_at TIMESTAMP,
    lifecycle_state TEXT NOT NULL
) WITH (fillfactor = 90);

INSERT INTO agent_heartbeats (agent_id, first_connected_at, last_connected_at, lifecycle_state)
    SELECT id::uuid, first_connected_at, last_connected_at, lifecycle_state FROM workspace_agents;

ALTER TABLE workspace_agents DROP COLUMN lifecycle_state;
ALTER TABLE workspace_agents DROP COLUMN first_connected_at;
ALTER TABLE workspace_agents DROP COLUMN last_connected_at;
-- Agent rows now change only on a key binding or a session revocation.
ALTER TABLE workspace_agents RESET (fillfactor);

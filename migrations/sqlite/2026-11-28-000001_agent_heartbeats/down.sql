ALTER TABLE workspace_agents ADD COLUMN lifecycle_state TEXT NOT NULL DEFAULT 'created';
ALTER TABLE workspace_agents ADD COLUMN first_connected_at TIMESTAMP;
ALTER TABLE workspace_agents ADD COLUMN last_connected_at TIMESTAMP;
UPDATE workspace_agents
    SET lifecycle_state = h.lifecycle_state,
        first_connected_at = h.first_connected_at,
        last_connected_at = h.last_connected_at
    FROM agent_heartbeats AS h WHERE h.agent_id = workspace_agents.id;
DROP TABLE agent_heartbeats;

ALTER TABLE workspace_agents DROP COLUMN require_agent_key;
ALTER TABLE workspace_agents DROP COLUMN agent_key_bound_at;
ALTER TABLE workspace_agents DROP COLUMN agent_public_key;

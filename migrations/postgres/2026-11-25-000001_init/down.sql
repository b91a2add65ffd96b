DROP TABLE audit_log;
DROP TABLE agent_sessions;
DROP TABLE workspace_agents;
DROP TABLE workspace_resources;
ALTER TABLE workspaces DROP CONSTRAINT workspaces_latest_build_fk;
DROP TABLE workspace_builds;
DROP TABLE workspaces;

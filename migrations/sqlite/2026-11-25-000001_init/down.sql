DROP TABLE audit_log;
DROP TABLE agent_sessions;
DROP TABLE workspace_agents;
DROP TABLE workspace_resources;
DROP TABLE workspaces;
DROP TABLE workspace_builds;

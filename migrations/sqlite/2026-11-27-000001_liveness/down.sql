DROP TRIGGER workspace_agents_liveness;
DROP TRIGGER workspaces_liveness;
DROP TABLE liveness_changes;

ALTER TABLE workspace_agents DROP COLUMN expect_location;
ALTER TABLE workspace_agents DROP COLUMN expect_account;
ALTER TABLE workspace_agents DROP COLUMN expect_provider;
ALTER TABLE workspace_agents DROP COLUMN expect_resource;

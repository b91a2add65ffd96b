ALTER TABLE workspace_resources DROP COLUMN expect_location;
ALTER TABLE workspace_resources DROP COLUMN expect_account;
ALTER TABLE workspace_resources DROP COLUMN expect_provider;

-- A resource's `expect` (SPEC §4): the cloud whose claims it names and the expected
-- account-like (account_id, subscription_id, project_id) and location-like (region, location,
-- zone) values, each optional. Read by the candidate query, so checking them costs no statement.
ALTER TABLE workspace_resources ADD COLUMN expect_provider TEXT;
ALTER TABLE workspace_resources ADD COLUMN expect_account TEXT;
ALTER TABLE workspace_resources ADD COLUMN expect_location TEXT;

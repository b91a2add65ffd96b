-- The expectation of an agent's resource (SPEC §4), copied onto the agent's row when the build
-- is created, so that the exchange's candidate statement reads it without visiting
-- `workspace_resources`: at a million agents that join was half the pages each lookup touched
-- (docs/BENCHMARKS.md). Resources never change after their build is created, so the copy never
-- goes stale. NULL, as most resources declare no expectation; `expect_resource` is then the
-- resource's name, for the refusal's message.
ALTER TABLE workspace_agents ADD COLUMN expect_resource TEXT;
ALTER TABLE workspace_agents ADD COLUMN expect_provider TEXT;
ALTER TABLE workspace_agents ADD COLUMN expect_account TEXT;
ALTER TABLE workspace_agents ADD COLUMN expect_location TEXT;

-- Only the agents of resources with an expectation are rewritten (one join; SQLite has
-- UPDATE ... FROM since 3.33, the bundled one is newer).
UPDATE workspace_agents
SET expect_resource = r.name,
    expect_provider = r.expect_provider,
    expect_account = r.expect_account,
    expect_location = r.expect_location
FROM workspace_resources r
WHERE r.id = workspace_agents.resource_id AND r.expect_provider IS NOT NULL;

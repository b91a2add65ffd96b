-- Rate-limited attempts are audited one row per client and minute, with how many there were.
ALTER TABLE audit_log ADD COLUMN count INTEGER NOT NULL DEFAULT 1;

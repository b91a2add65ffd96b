-- Why an attempt failed (the check that failed, never proof material), for the audit listing and
-- the dashboard.
ALTER TABLE audit_log ADD COLUMN reason TEXT;

DROP INDEX audit_log_uid;
ALTER TABLE audit_log DROP COLUMN uid;

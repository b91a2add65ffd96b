-- Each audit record carries an id made when the attempt was answered. A batch the writer
-- retries after a lost connection (the first try may have committed) inserts nothing twice.
ALTER TABLE audit_log ADD COLUMN uid TEXT;
UPDATE audit_log SET uid = 'legacy-' || id WHERE uid IS NULL;
ALTER TABLE audit_log ALTER COLUMN uid SET NOT NULL;
CREATE UNIQUE INDEX audit_log_uid ON audit_log (uid);

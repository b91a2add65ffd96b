//! The store's error type.

use crate::model::FieldError;

/// Errors returned by [`crate::Store`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The input broke the data model's rules; every problem is listed.
    #[error("validation failed: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.detail)).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    /// The database could not be reached or no connection was free in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error.
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// A write shared with other requests (a heartbeat batch) failed with this database error.
    #[error("database error: {0}")]
    Batch(String),
    /// A stored value could not be read back (for example a malformed id).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when retrying later may succeed (the API answers 503).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for StoreError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// True for the messages of a connection that broke or a server that is going away, as
/// opposed to a statement the database refused.
fn connection_lost(message: &str) -> bool {
    const LOST: &[&str] = &[
        "connection closed",
        "connection reset",
        "connection refused",
        "broken pipe",
        "unexpected eof",
        "error communicating with the server",
        "server closed the connection",
        "terminating connection",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "timed out",
    ];
    let m = message.to_ascii_lowercase();
    LOST.iter().any(|l| m.contains(l))
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            // A pooled connection the server closed (restart, failover): retry later.
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            Error::DeserializationError(e) => StoreError::Corrupt(e.to_string()),
            // A statement the database refused, whatever its message says.
            e @ Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation
                | DatabaseErrorKind::ForeignKeyViolation
                | DatabaseErrorKind::NotNullViolation
                | DatabaseErrorKind::CheckViolation
                | DatabaseErrorKind::SerializationFailure,
                _,
            ) => StoreError::Database(e),
            // The PostgreSQL driver reports a dropped socket or a server going down in several
            // shapes (an error of unknown kind, a driver error); only the message tells it from
            // a refused statement.
            e if connection_lost(&e.to_string()) => StoreError::Unavailable(e.to_string()),
            other => StoreError::Database(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn unknown(message: &str) -> StoreError {
        Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new(message.to_owned())).into()
    }

    #[test]
    fn a_lost_connection_is_unavailable_a_refused_statement_is_not() {
        assert!(unknown("connection closed").is_unavailable());
        assert!(
            unknown("FATAL: terminating connection due to administrator command").is_unavailable()
        );
        assert!(!unknown("invalid byte sequence for encoding \"UTF8\": 0x00").is_unavailable());
        let unique: StoreError = Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("connection closed".to_owned()),
        )
        .into();
        assert!(
            !unique.is_unavailable(),
            "only errors of unknown kind are read"
        );
    }
}

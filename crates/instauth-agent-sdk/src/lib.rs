//! instauth agent SDK: metadata clients, token exchange, session.

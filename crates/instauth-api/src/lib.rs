//! instauth HTTP API: router, handlers, error map, metrics, audit.

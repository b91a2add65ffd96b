//! Test support for instauth: test CAs and keys, fake metadata servers, test databases.

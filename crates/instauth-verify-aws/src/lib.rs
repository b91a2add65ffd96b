//! AWS instance identity document verifier.

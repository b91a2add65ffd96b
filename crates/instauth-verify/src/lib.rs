//! Common identity types, proof type, clock and errors for instauth verifiers.

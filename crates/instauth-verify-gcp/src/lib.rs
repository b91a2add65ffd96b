//! Google instance identity JWT verifier.

//! Azure attested data verifier.

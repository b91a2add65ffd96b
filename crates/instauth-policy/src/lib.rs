//! Pure agent selection policy for instauth token exchanges.

//! instauth server.

fn main() {}

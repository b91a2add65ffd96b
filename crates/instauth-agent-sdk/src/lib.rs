//! instauth agent SDK: metadata clients, token exchange, session.
//!
//! The pieces, bottom up:
//! - [`metadata::MetadataClient`] reads this instance's identity proof from AWS IMDS (v2 with
//!   v1 fallback), Azure IMDS or the GCP metadata server.
//! - [`client::Client`] talks to the instauth server: the exchange endpoints and the agent API
//!   (`me/manifest`, `me/heartbeat`), with extra headers on every request.
//! - [`session::Session`] holds the session token (static, from a file, or exchanged) and
//!   refreshes it once, single-flight, when the server answers 401. With an
//!   [`agent_key::AgentKey`] it signs every exchange (SPEC §2.1).
//! - [`agent::Agent`] runs the agent's life: connect, heartbeat, back off, report shutdown.
//! - [`ops`] serves the agent's metrics and debug endpoints.
//!
//! ```no_run
//! # async fn run() -> Result<(), instauth_agent_sdk::Error> {
//! use std::sync::Arc;
//! use instauth_agent_sdk::{Agent, AgentOptions, Client, ClientOptions, Credentials,
//!     GoogleIdentity, MetadataClient, MetadataEndpoints, Provider, Session};
//!
//! let client = Client::new("https://coder.example.com", ClientOptions::default())?;
//! let credentials = Credentials::InstanceIdentity {
//!     provider: Provider::Aws,
//!     metadata: MetadataClient::new(MetadataEndpoints::from_env())?,
//!     google: GoogleIdentity::default(),
//! };
//! let session = Arc::new(Session::new(client, credentials, Some("dev")));
//! Agent::new(session, AgentOptions::default())
//!     .run(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod agent_key;
pub mod client;
pub mod error;
pub mod metadata;
pub mod metrics;
pub mod ops;
pub mod session;

pub use agent::{Agent, AgentOptions, AgentStatus, Backoff};
pub use agent_key::AgentKey;
pub use client::{
    exchange_path, header_command, normalize_agent_name, parse_header, Client, ClientOptions,
    LifecycleState,
};
pub use error::{Error, MetadataError, Result};
pub use instauth_types::{AgentAuth, Proof, Provider};
pub use metadata::{GoogleIdentity, MetadataClient, MetadataEndpoints};
pub use metrics::Metrics;
pub use session::{Credentials, Session, SessionToken};

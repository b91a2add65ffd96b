//! Access flags shared by `instauth server` and `instauth identity verify` (SPEC §6): the
//! account allow-lists.

use clap::Args;
use instauth_api::AllowLists;

/// Which accounts may exchange. Each flag is a comma-separated list; empty or absent allows any.
#[derive(Args, Clone, Debug, Default)]
pub struct AllowArgs {
    /// AWS account IDs whose instances may exchange (comma-separated; empty: any). A proof
    /// from another account gets 403 "Identity not allowed.".
    #[arg(long, env = "INSTAUTH_AWS_ACCOUNTS", value_name = "IDS")]
    pub aws_accounts: Option<String>,
    /// GCP project IDs whose instances may exchange (comma-separated; empty: any).
    #[arg(long, env = "INSTAUTH_GCP_PROJECTS", value_name = "IDS")]
    pub gcp_projects: Option<String>,
    /// Azure subscription IDs whose VMs may exchange (comma-separated; empty: any).
    #[arg(long, env = "INSTAUTH_AZURE_SUBSCRIPTIONS", value_name = "IDS")]
    pub azure_subscriptions: Option<String>,
}

impl AllowArgs {
    /// The allow-lists the flags describe.
    pub fn lists(&self) -> AllowLists {
        let list = |v: &Option<String>| AllowLists::parse_list(v.as_deref().unwrap_or_default());
        AllowLists {
            aws_accounts: list(&self.aws_accounts),
            azure_subscriptions: list(&self.azure_subscriptions),
            gcp_projects: list(&self.gcp_projects),
        }
    }
}

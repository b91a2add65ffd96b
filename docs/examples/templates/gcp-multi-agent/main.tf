# Two instauth agents, `main` and `dev`, on one Compute Engine VM, authenticated by the VM's
# Google identity token. After `terraform apply`, import the state into instauth:
#
#   terraform show -json > state.json
#   instauth workspaces apply alice --terraform-state state.json
#
# See README.md in this directory.

terraform {
  required_version = ">= 1.3"
  required_providers {
    coder = {
      source = "coder/coder"
    }
    google = {
      source = "hashicorp/google"
    }
  }
}

variable "project" {
  description = "GCP project of the workspace VM."
  type        = string
}

variable "zone" {
  description = "Zone of the workspace VM."
  type        = string
  default     = "us-central1-a"
}

variable "machine_type" {
  description = "Compute Engine machine type."
  type        = string
  default     = "e2-small"
}

variable "workspace" {
  description = "instauth workspace name (used to name the VM; pass the same name to `instauth workspaces apply`)."
  type        = string
  default     = "alice"
}

variable "instauth_url" {
  description = "The instauth server as the VM reaches it (CODER_AGENT_URL), e.g. https://instauth.example.com."
  type        = string
}

variable "google_audience" {
  description = "Audience of the identity tokens: the server's --google-audience."
  type        = string
  default     = "coder"
}

variable "agent_download_url" {
  description = "Where the VM downloads the instauth-agent binary (linux/amd64); the server does not serve it."
  type        = string
}

variable "agent_sha256" {
  description = "SHA-256 of that binary: cloud-init refuses to install anything else."
  type        = string
}

provider "google" {
  project = var.project
  zone    = var.zone
}

# The VM's identity token is issued for its service account: without one there is no token.
data "google_compute_default_service_account" "default" {}

# The agents. Their resource names are the agent names (as in Coder); `auth` tells instauth to
# accept this VM's identity token for them.
resource "coder_agent" "main" {
  arch = "amd64"
  os   = "linux"
  auth = "google-instance-identity"
}

resource "coder_agent" "dev" {
  arch = "amd64"
  os   = "linux"
  auth = "google-instance-identity"
}

locals {
  # One systemd template unit, started twice: instauth-agent@main and instauth-agent@dev. Each
  # names itself with CODER_AGENT_NAME (both agents share the instance ID, so without a name the
  # server answers 409 listing them) and gets its own metrics and debug ports.
  user_data = <<-EOT
    #cloud-config
    users:
      - default
      - name: instauth-agent
        system: true
        shell: /usr/sbin/nologin
    write_files:
      - path: /etc/systemd/system/instauth-agent@.service
        content: |
          [Unit]
          Description=instauth workspace agent %i
          After=network-online.target
          Wants=network-online.target

          [Service]
          Environment=CODER_AGENT_AUTH=google-instance-identity
          Environment=CODER_AGENT_URL=${var.instauth_url}
          Environment=CODER_AGENT_GOOGLE_AUDIENCE=${var.google_audience}
          Environment=CODER_AGENT_NAME=%i
          EnvironmentFile=/etc/instauth-agent/%i.env
          User=instauth-agent
          # State (the agent's key, where the agent keeps one) in /var/lib/instauth-agent.
          StateDirectory=instauth-agent
          Environment=XDG_STATE_HOME=/var/lib
          LogsDirectory=instauth-agent/%i
          ExecStart=/usr/local/bin/instauth-agent --log-dir /var/log/instauth-agent/%i
          Restart=always
          RestartSec=5
          KillSignal=SIGTERM
          TimeoutStopSec=15

          [Install]
          WantedBy=multi-user.target
      - path: /etc/instauth-agent/main.env
        content: |
          CODER_AGENT_PROMETHEUS_ADDRESS=127.0.0.1:2112
          CODER_AGENT_DEBUG_ADDRESS=127.0.0.1:2113
      - path: /etc/instauth-agent/dev.env
        content: |
          CODER_AGENT_PROMETHEUS_ADDRESS=127.0.0.1:2122
          CODER_AGENT_DEBUG_ADDRESS=127.0.0.1:2123
    runcmd:
      - curl -fsSL --retry 5 -o /usr/local/bin/instauth-agent '${var.agent_download_url}'
      - echo '${var.agent_sha256}  /usr/local/bin/instauth-agent' | sha256sum -c - || { rm -f /usr/local/bin/instauth-agent; exit 1; }
      - chmod 0755 /usr/local/bin/instauth-agent
      - systemctl daemon-reload
      - systemctl enable --now instauth-agent@main instauth-agent@dev
  EOT
}

resource "google_compute_instance" "dev" {
  name         = "instauth-${var.workspace}"
  machine_type = var.machine_type

  boot_disk {
    initialize_params {
      # Ubuntu's GCE images run cloud-init on the `user-data` metadata key.
      image = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
    }
  }

  network_interface {
    network = "default"
    access_config {}
  }

  service_account {
    email  = data.google_compute_default_service_account.default.email
    scopes = ["cloud-platform"]
  }

  metadata = {
    user-data = local.user_data
  }

  # Coder places agents on the resource that depends on them; keep the template valid there too.
  depends_on = [coder_agent.main, coder_agent.dev]
}

output "instance_id" {
  description = "What instauth will see as the agents' instance ID (numeric, not the VM's name)."
  value       = google_compute_instance.dev.instance_id
}

# Two instauth agents, `main` and `dev`, on one EC2 instance, authenticated by the instance's
# AWS identity document. After `terraform apply`, import the state into instauth:
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
    aws = {
      source = "hashicorp/aws"
    }
  }
}

variable "region" {
  description = "AWS region of the workspace VM."
  type        = string
  default     = "us-east-1"
}

variable "instance_type" {
  description = "EC2 instance type."
  type        = string
  default     = "t3.micro"
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

variable "agent_download_url" {
  description = "Where the VM downloads the instauth-agent binary (linux/amd64); the server does not serve it."
  type        = string
}

variable "agent_sha256" {
  description = "SHA-256 of that binary: cloud-init refuses to install anything else."
  type        = string
}

provider "aws" {
  region = var.region
}

data "aws_ami" "ubuntu" {
  most_recent = true
  owners      = ["099720109477"] # Canonical
  filter {
    name   = "name"
    values = ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
  }
}

# The agents. Their resource names are the agent names (as in Coder); `auth` tells instauth to
# accept this instance's identity document for them.
resource "coder_agent" "main" {
  arch = "amd64"
  os   = "linux"
  auth = "aws-instance-identity"
}

resource "coder_agent" "dev" {
  arch = "amd64"
  os   = "linux"
  auth = "aws-instance-identity"
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
          Environment=CODER_AGENT_AUTH=aws-instance-identity
          Environment=CODER_AGENT_URL=${var.instauth_url}
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

resource "aws_instance" "dev" {
  ami           = data.aws_ami.ubuntu.id
  instance_type = var.instance_type
  user_data     = local.user_data

  # IMDSv2 only: the agent asks for a session token first.
  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
  }

  tags = {
    Name = "instauth-${var.workspace}"
  }

  # Coder places agents on the resource that depends on them; keep the template valid there too.
  depends_on = [coder_agent.main, coder_agent.dev]
}

output "instance_id" {
  description = "What instauth will see as the agents' instance ID."
  value       = aws_instance.dev.id
}

//! The command line: SPEC §7's flags and environment variables, and configuration errors.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_instauth-agent");

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = Command::new(AGENT)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let options = &help[help.find("Options:").unwrap()..];
    for (flag, env, default) in [
        ("--auth", "CODER_AGENT_AUTH", Some("token")),
        ("--agent-name", "CODER_AGENT_NAME", None),
        ("--agent-token", "CODER_AGENT_TOKEN", None),
        ("--agent-token-file", "CODER_AGENT_TOKEN_FILE", None),
        ("--agent-url", "CODER_AGENT_URL", None),
        ("--agent-header", "CODER_AGENT_HEADER", None),
        ("--agent-header-command", "CODER_AGENT_HEADER_COMMAND", None),
        (
            "--log-human",
            "CODER_AGENT_LOGGING_HUMAN",
            Some("/dev/stderr"),
        ),
        ("--log-json", "CODER_AGENT_LOGGING_JSON", None),
        ("--log-dir", "CODER_AGENT_LOG_DIR", None),
        (
            "--prometheus-address",
            "CODER_AGENT_PROMETHEUS_ADDRESS",
            Some("127.0.0.1:2112"),
        ),
        (
            "--debug-address",
            "CODER_AGENT_DEBUG_ADDRESS",
            Some("127.0.0.1:2113"),
        ),
        (
            "--google-audience",
            "CODER_AGENT_GOOGLE_AUDIENCE",
            Some("coder"),
        ),
        (
            "--google-service-account",
            "CODER_AGENT_GOOGLE_SERVICE_ACCOUNT",
            Some("default"),
        ),
        (
            "--heartbeat-interval",
            "CODER_AGENT_HEARTBEAT_INTERVAL",
            Some("15s"),
        ),
        ("--agent-key-file", "CODER_AGENT_KEY_FILE", None),
    ] {
        let start = options
            .find(&format!("{flag} <"))
            .unwrap_or_else(|| panic!("{flag} missing from:\n{help}"));
        let section = &options[start..];
        let section = &section[..section[2..]
            .find("\n      --")
            .map_or(section.len(), |i| i + 2)];
        assert!(
            section.contains(&format!("[env: {env}")),
            "{flag}: {section}"
        );
        if let Some(d) = default {
            assert!(
                section.contains(&format!("[default: {d}]")),
                "{flag}: {section}"
            );
        }
    }
    for env in [
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "CODER_AGENT_AZURE_METADATA_URL",
        "GCE_METADATA_HOST",
    ] {
        assert!(help.contains(env), "{env} missing from --help");
    }
}

#[test]
fn token_auth_without_a_token_says_what_to_set() {
    let out = Command::new(AGENT)
        .env_clear()
        .env("CODER_AGENT_URL", "http://127.0.0.1:9")
        .env("CODER_AGENT_PROMETHEUS_ADDRESS", "")
        .env("CODER_AGENT_DEBUG_ADDRESS", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("CODER_AGENT_TOKEN"), "{err}");
}

#[test]
fn a_bad_header_is_refused_without_echoing_it() {
    let out = Command::new(AGENT)
        .env_clear()
        .args(["--agent-url", "http://127.0.0.1:9", "--agent-token", "t"])
        .args(["--agent-header", "Authorization: Bearer secret-value"])
        .args(["--prometheus-address", "", "--debug-address", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("expected key=value"), "{err}");
    assert!(!err.contains("secret-value"), "{err}");
}

#[test]
fn no_place_for_the_agent_key_says_what_to_set() {
    let out = Command::new(AGENT)
        .env_clear()
        .args(["--agent-url", "http://127.0.0.1:9"])
        .args(["--auth", "aws-instance-identity", "--agent-name", "main"])
        .args(["--prometheus-address", "", "--debug-address", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("CODER_AGENT_KEY_FILE"), "{err}");
}

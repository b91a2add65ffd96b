//! The fleet: agents registered through the admin API, AWS proofs signed by the test region
//! keys, and session tokens from one exchange per sampled agent.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use instauth_testkit::TestPki;
use serde_json::{json, Value};

/// The AWS region of every test proof; `--aws-certificates` trusts the test keys for it.
pub const REGION: &str = "us-east-1";
/// Agents per build: the server's own limit on a build (`instauth-store`'s `MAX_AGENTS`).
pub const AGENTS_PER_BUILD: usize = 10_000;
/// Agents per resource, so that a full build stays within the limit of 1000 resources.
pub const AGENTS_PER_RESOURCE: usize = 10;
/// Builds registered at once: one per core.
const SEED_CONCURRENCY: usize = 2;
/// Exchanges in flight while collecting session tokens.
const EXCHANGE_CONCURRENCY: usize = 32;

/// Agent `i`'s instance ID (one VM per agent, AWS-shaped: `i-` and 17 hex digits).
pub fn instance_id(i: usize) -> String {
    format!("i-{i:017x}")
}

/// Agent `i`'s name, unique within its build.
pub fn agent_name(i: usize) -> String {
    format!("a{i}")
}

/// Workspace `w`'s name.
pub fn workspace_name(w: usize) -> String {
    format!("fleet-{w:04}")
}

/// The admin API body of the build that registers agents `first..end`.
pub fn build_body(first: usize, end: usize) -> Value {
    let resources: Vec<Value> = (first..end)
        .step_by(AGENTS_PER_RESOURCE)
        .map(|start| {
            let agents: Vec<Value> = (start..end.min(start + AGENTS_PER_RESOURCE))
                .map(|i| {
                    json!({
                        "name": agent_name(i),
                        "auth": "aws-instance-identity",
                        "instance_id": instance_id(i),
                    })
                })
                .collect();
            json!({"name": format!("vm-{start}"), "type": "aws_instance", "agents": agents})
        })
        .collect();
    json!({ "resources": resources })
}

/// `k` agent indices spread evenly over `0..n` (every agent when `k >= n`), so that sampled
/// agents sit all over the tables, not only in the first build.
pub fn sample(n: usize, k: usize) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    (0..k).map(|j| j * n / k).collect()
}

/// Registers agents `0..n` in workspaces of [`AGENTS_PER_BUILD`]; returns the time it took.
pub async fn seed(
    client: &reqwest::Client,
    url: &str,
    admin_token: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(SEED_CONCURRENCY));
    let mut tasks = Vec::new();
    for (w, first) in (0..n).step_by(AGENTS_PER_BUILD).enumerate() {
        let end = n.min(first + AGENTS_PER_BUILD);
        let permit = sem.clone().acquire_owned().await.context("semaphore")?;
        let client = client.clone();
        let endpoint = format!("{url}/api/v2/workspaces/{}/builds", workspace_name(w));
        let admin_token = admin_token.to_owned();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let resp = client
                .post(&endpoint)
                .bearer_auth(&admin_token)
                .json(&build_body(first, end))
                .send()
                .await
                .with_context(|| format!("POST {endpoint}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status.as_u16() != 201 {
                bail!("POST {endpoint}: {status}: {text}");
            }
            let created: Value = serde_json::from_str(&text).context("build response")?;
            let agents = created["agents"].as_array().map_or(0, Vec::len);
            if agents != end - first {
                bail!(
                    "POST {endpoint} created {agents} agents, not {}",
                    end - first
                );
            }
            Ok(())
        }));
        if w > 0 && w.is_multiple_of(20) {
            eprintln!(
                "  seeding: {} agents sent ({:.0?})",
                first,
                started.elapsed()
            );
        }
    }
    for t in tasks {
        t.await.context("seeding task")??;
    }
    Ok(started.elapsed())
}

/// The exchange bodies of the sampled agents, as `instauth-agent` sends them on AWS: the
/// identity document, its RSA-1024 `signature` and its RSA-2048 `rsa2048` PKCS#7 (the one the
/// server verifies when present), plus the agent's name. One JSON document per element.
pub fn proofs(pki: &TestPki, agents: &[usize]) -> anyhow::Result<Vec<String>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = agents.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&i| {
                            let mut req = pki.aws_proof(&instance_id(i), REGION);
                            req.agent_name = Some(agent_name(i));
                            serde_json::to_string(&req).context("serialising a proof")
                        })
                        .collect::<anyhow::Result<Vec<String>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(agents.len());
        for h in handles {
            match h.join() {
                Ok(part) => all.extend(part?),
                Err(_) => bail!("a proof-signing thread panicked"),
            }
        }
        Ok(all)
    })
}

/// Exchanges every body once and returns the session tokens in the same order.
pub async fn exchange_all(
    client: &reqwest::Client,
    url: &str,
    bodies: &[String],
) -> anyhow::Result<Vec<String>> {
    let endpoint = format!("{url}/api/v2/workspaceagents/aws-instance-identity");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(EXCHANGE_CONCURRENCY));
    let mut tasks = Vec::with_capacity(bodies.len());
    for body in bodies {
        let permit = sem.clone().acquire_owned().await.context("semaphore")?;
        let client = client.clone();
        let endpoint = endpoint.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let resp = client
                .post(&endpoint)
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .context("exchange")?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if status.as_u16() != 200 {
                bail!("exchange answered {status}: {text}");
            }
            let v: Value = serde_json::from_str(&text).context("exchange response")?;
            v["session_token"]
                .as_str()
                .map(str::to_owned)
                .context("exchange response has no session_token")
        }));
    }
    let mut tokens = Vec::with_capacity(tasks.len());
    for t in tasks {
        tokens.push(t.await.context("exchange task")??);
    }
    Ok(tokens)
}

/// Sends one heartbeat (`ready`) with each session token, as every agent of a running fleet has
/// done before any window of its steady state; each answer must be 204.
pub async fn heartbeat_all(
    client: &reqwest::Client,
    url: &str,
    tokens: &[String],
) -> anyhow::Result<()> {
    let endpoint = format!("{url}/api/v2/workspaceagents/me/heartbeat");
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(EXCHANGE_CONCURRENCY));
    let mut tasks = Vec::with_capacity(tokens.len());
    for token in tokens {
        let permit = sem.clone().acquire_owned().await.context("semaphore")?;
        let (client, endpoint, token) = (client.clone(), endpoint.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let resp = client
                .post(&endpoint)
                .header("Coder-Session-Token", token)
                .header("Content-Type", "application/json")
                .body(r#"{"lifecycle_state":"ready"}"#)
                .send()
                .await
                .context("heartbeat")?;
            let status = resp.status();
            if status.as_u16() != 204 {
                bail!("heartbeat answered {status}");
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.context("heartbeat task")??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_spread_over_the_fleet() {
        assert_eq!(sample(5, 20), vec![0, 1, 2, 3, 4]);
        let s = sample(1_000_000, 20_000);
        assert_eq!(s.len(), 20_000);
        assert_eq!(s[0], 0);
        assert_eq!(s[1], 50);
        assert_eq!(*s.last().expect("non-empty"), 999_950);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn build_bodies_fit_the_server_limits() {
        let body = build_body(20_000, 20_000 + AGENTS_PER_BUILD);
        let resources = body["resources"].as_array().expect("resources");
        assert_eq!(resources.len(), AGENTS_PER_BUILD / AGENTS_PER_RESOURCE);
        assert!(resources.len() <= 1000);
        let agents: Vec<&Value> = resources
            .iter()
            .flat_map(|r| r["agents"].as_array().expect("agents"))
            .collect();
        assert_eq!(agents.len(), AGENTS_PER_BUILD);
        assert_eq!(agents[0]["name"], "a20000");
        assert_eq!(agents[0]["instance_id"], "i-00000000000004e20");
        // Within the admin API's 4 MiB body limit with room to spare.
        assert!(body.to_string().len() < 2 * 1024 * 1024);
        // A short last build.
        let tail = build_body(0, 15);
        let n: usize = tail["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["agents"].as_array().map_or(0, Vec::len))
            .sum();
        assert_eq!(n, 15);
    }

    #[test]
    fn proofs_carry_the_agent_name_and_all_three_fields() {
        let pki = TestPki::new();
        let bodies = proofs(&pki, &[0, 7, 123_456]).expect("signs");
        assert_eq!(bodies.len(), 3);
        let v: Value = serde_json::from_str(&bodies[2]).expect("json");
        assert_eq!(v["agent_name"], "a123456");
        assert!(v["document"]
            .as_str()
            .expect("document")
            .contains(&instance_id(123_456)));
        assert!(!v["signature"].as_str().expect("signature").is_empty());
        assert!(!v["pkcs7"].as_str().expect("pkcs7").is_empty());
        assert!(!bodies[0].contains('\n'), "one body per line for wrk");
    }
}

//! The agent's own Ed25519 key (SPEC §2.1): kept in a file private to the agent's user, created
//! on first start, and used to sign every exchange so that no other process on the VM, and no
//! one who copied a proof, can take the agent's name.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

use instauth_types::agent_key;
use instauth_types::{AgentKeyFields, Proof};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::error::{Error, Result};

/// The `--agent-key-file` value that turns keys off.
pub const NO_KEY: &str = "none";

/// The key file's default location: `$XDG_STATE_HOME/instauth-agent/<name>.key`, else
/// `~/.local/state/instauth-agent/<name>.key`, with `<name>` the agent name or `default`.
pub fn default_path(agent_name: Option<&str>) -> Result<PathBuf> {
    default_path_in(
        std::env::var_os("XDG_STATE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
        agent_name,
    )
}

/// [`default_path`] for the given `XDG_STATE_HOME` and `HOME` (empty values count as unset).
pub fn default_path_in(
    state_home: Option<&OsStr>,
    home: Option<&OsStr>,
    agent_name: Option<&str>,
) -> Result<PathBuf> {
    let name = agent_name.map(str::trim).filter(|n| !n.is_empty());
    let file = match name {
        None => "default".to_owned(),
        // Agent names are [a-zA-Z0-9_-]{1,64} on the server; anything else would not name a
        // file safely (`..`, `/`).
        Some(n)
            if n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            n.to_owned()
        }
        Some(n) => {
            return Err(Error::Config(format!(
                "the agent name {n:?} cannot name a key file: pass --agent-key-file \
                 (CODER_AGENT_KEY_FILE)"
            )))
        }
    };
    let base = match (
        state_home.filter(|s| !s.is_empty()),
        home.filter(|s| !s.is_empty()),
    ) {
        (Some(state), _) => PathBuf::from(state),
        (None, Some(home)) => Path::new(home).join(".local/state"),
        (None, None) => {
            return Err(Error::Config(
                "neither XDG_STATE_HOME nor HOME is set: pass --agent-key-file \
                 (CODER_AGENT_KEY_FILE), or `none` to send no agent key"
                    .into(),
            ))
        }
    };
    Ok(base.join("instauth-agent").join(format!("{file}.key")))
}

/// An Ed25519 key pair that signs exchanges.
pub struct AgentKey {
    pair: Ed25519KeyPair,
}

/// Shows the fingerprint only, never key material.
impl std::fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentKey")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

fn key_error(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::AgentKey {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

impl AgentKey {
    /// A fresh random key, with its PKCS#8 (v2) encoding for storage.
    pub fn generate() -> Result<(AgentKey, Vec<u8>)> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| Error::Config("cannot generate an agent key".into()))?;
        let key = AgentKey::from_pkcs8(pkcs8.as_ref())
            .ok_or_else(|| Error::Config("cannot read a generated agent key".into()))?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// A key from its PKCS#8 DER encoding (v2 as ring writes it, or v1 as
    /// `openssl genpkey -algorithm ed25519 -outform DER` does).
    pub fn from_pkcs8(der: &[u8]) -> Option<AgentKey> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .ok()
            .map(|pair| AgentKey { pair })
    }

    /// Reads the key at `path`, or creates it there: the file with mode 0600, missing
    /// directories with mode 0700. Returns the key and whether it was created. A key file that
    /// others can read is tightened to 0600 (and logged).
    pub fn load_or_create(path: &Path) -> Result<(AgentKey, bool)> {
        match std::fs::read(path) {
            Ok(der) => {
                tighten(path)?;
                let key = AgentKey::from_pkcs8(&der)
                    .ok_or_else(|| key_error(path, "not an Ed25519 private key in PKCS#8 DER"))?;
                return Ok((key, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_error(path, e)),
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| key_error(dir, e))?;
        let (key, der) = AgentKey::generate()?;
        // Write a private temporary file, then link it into place: the key appears whole or not
        // at all, and of two agents starting at once with the same file, the second reads the
        // first's key instead of replacing it.
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name()
                .and_then(OsStr::to_str)
                .unwrap_or("agent-key"),
            std::process::id()
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let written = opts
            .open(&tmp)
            .and_then(|mut f| f.write_all(&der).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(key_error(&tmp, e));
        }
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok((key, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                AgentKey::load_or_create(path)
            }
            Err(e) => Err(key_error(path, e)),
        }
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key's fingerprint, as `instauth workspaces show` prints it.
    pub fn fingerprint(&self) -> String {
        agent_key::fingerprint(self.public_key())
    }

    /// The agent key fields for `proof` (with its agent name already set) signed at `time`
    /// (Unix seconds).
    pub fn sign(&self, proof: &Proof, time: i64) -> AgentKeyFields {
        let message = proof.agent_key_message(time);
        AgentKeyFields {
            agent_public_key: Some(agent_key::encode(self.public_key())),
            agent_key_time: Some(time),
            agent_key_signature: Some(agent_key::encode(
                self.pair.sign(message.as_bytes()).as_ref(),
            )),
        }
    }
}

/// Makes an existing key file private to its owner, as the agent would have created it.
fn tighten(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| key_error(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| key_error(path, format!("cannot make it private (mode 0600): {e}")))?;
            tracing::warn!(
                path = %path.display(),
                old_mode = format!("{mode:o}"),
                "The agent key file was readable by others; made it private (mode 0600)."
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_paths() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert_eq!(
            default_path_in(os("/state"), os("/home/u"), Some(" main ")).unwrap(),
            PathBuf::from("/state/instauth-agent/main.key")
        );
        assert_eq!(
            default_path_in(os(""), os("/home/u"), None).unwrap(),
            PathBuf::from("/home/u/.local/state/instauth-agent/default.key")
        );
        assert!(default_path_in(None, None, Some("main")).is_err());
        assert!(default_path_in(os("/s"), None, Some("../etc")).is_err());
        assert!(default_path_in(os("/s"), None, Some("a/b")).is_err());
    }

    #[test]
    fn creates_a_private_key_once_and_reads_it_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/instauth-agent/main.key");
        let (a, created) = AgentKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let (b, created) = AgentKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.fingerprint().len(), agent_key::FINGERPRINT_LEN);
        assert!(!format!("{a:?}").contains(&agent_key::encode(a.public_key())));
        // Nothing but the key is left in the directory.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        AgentKey::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "tightened");

        std::fs::write(&path, b"not a key").unwrap();
        let err = AgentKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn signatures_verify_over_the_shared_message() {
        let (key, _) = AgentKey::generate().unwrap();
        let mut proof = Proof::Gcp(instauth_types::GoogleInstanceIdentityRequest {
            json_web_token: "a.b.c".into(),
            agent_name: None,
        });
        proof.set_agent_name(Some("dev"));
        let fields = key.sign(&proof, 1_700_000_000);
        let sig = agent_key::decode(fields.agent_key_signature.as_deref().unwrap()).unwrap();
        let message = agent_key::message(
            instauth_types::Provider::Gcp,
            Some("dev"),
            1_700_000_000,
            "a.b.c",
        );
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public_key())
            .verify(message.as_bytes(), &sig)
            .unwrap();
        assert_eq!(
            fields.agent_public_key.as_deref(),
            Some(agent_key::encode(key.public_key()).as_str())
        );
    }
}

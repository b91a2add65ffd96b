//! Files the server keeps private to its user: the data directory (0700), the embedded database
//! with its WAL and shared-memory files, and secrets such as the admin token (0600). Looser modes
//! left by an older version or a careless copy are tightened at start; a file that cannot be
//! tightened (another user's) is an error, so the server refuses to start rather than run with a
//! readable session key.

use std::path::{Path, PathBuf};

/// Mode of the data directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the database files and secrets.
pub const FILE_MODE: u32 = 0o600;

/// A file whose permissions were tightened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The file or directory.
    pub path: PathBuf,
    /// Its mode before (permission bits).
    pub was: u32,
    /// Its mode now.
    pub now: u32,
}

/// Why a path could not be made private.
#[derive(Debug, thiserror::Error)]
#[error("cannot make {} private to this user: {source}", .path.display())]
pub struct PermissionError {
    /// The path.
    pub path: PathBuf,
    /// The IO error.
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> PermissionError + '_ {
    move |source| PermissionError {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes group and other permissions from `path` if it has any; returns what changed.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> Result<Option<Tightened>, PermissionError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(err(path))?;
    let was = meta.permissions().mode() & 0o7777;
    if was & 0o077 == 0 {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err(path))?;
    Ok(Some(Tightened {
        path: path.to_path_buf(),
        was,
        now: mode,
    }))
}

#[cfg(not(unix))]
fn tighten(_: &Path, _: u32) -> Result<Option<Tightened>, PermissionError> {
    Ok(None)
}

/// Creates `dir` (and its parents) if missing, private to this user, and tightens it if looser.
pub fn private_dir(dir: &Path) -> Result<Vec<Tightened>, PermissionError> {
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
        builder.create(dir).map_err(err(dir))?;
    }
    Ok(tighten(dir, DIR_MODE)?.into_iter().collect())
}

/// Tightens `file` to 0600 if it exists and is looser.
pub fn private_file(file: &Path) -> Result<Vec<Tightened>, PermissionError> {
    if !file.exists() {
        return Ok(Vec::new());
    }
    Ok(tighten(file, FILE_MODE)?.into_iter().collect())
}

/// Makes the embedded database private: its directory 0700, the database file created empty
/// with mode 0600 when missing (SQLite gives its WAL and shared-memory files the database
/// file's mode), and every existing one of the three files tightened to 0600.
pub fn private_sqlite(db: &Path) -> Result<Vec<Tightened>, PermissionError> {
    let mut changed = Vec::new();
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        changed.extend(private_dir(dir)?);
    }
    if !db.exists() {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
        match opts.open(db) {
            Ok(_) => {}
            // Another process created it first: tighten below like any existing file.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(db)(e)),
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        changed.extend(private_file(Path::new(&name))?);
    }
    Ok(changed)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_and_tightens_loose_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let db = dir.join("instauth.db");
        assert!(
            private_sqlite(&db).unwrap().is_empty(),
            "nothing to tighten"
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&db), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let wal = dir.join("instauth.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o664)).unwrap();
        let changed = private_sqlite(&db).unwrap();
        let paths: Vec<_> = changed.iter().map(|t| t.path.clone()).collect();
        assert_eq!(paths, [dir.clone(), db.clone(), wal.clone()]);
        assert_eq!(changed[1].was, 0o644);
        assert_eq!((mode(&dir), mode(&db), mode(&wal)), (0o700, 0o600, 0o600));
    }
}

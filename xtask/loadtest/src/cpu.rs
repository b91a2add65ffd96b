//! CPU time from `/proc`: a process's own ticks, PostgreSQL's (every process of the cluster plus
//! what its exited children left in the postmaster's `cutime`/`cstime`), and this process's
//! reaped children (the load generators).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// The fields of `/proc/<pid>/stat` the load test reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// Process ID.
    pub pid: u32,
    /// Executable name (`comm`, at most 15 bytes).
    pub comm: String,
    /// State (`R`, `S`, ..., `Z` for a zombie not yet reaped).
    pub state: char,
    /// Parent process ID.
    pub ppid: u32,
    /// User-mode ticks of the process itself (all its threads).
    pub utime: u64,
    /// Kernel-mode ticks of the process itself.
    pub stime: u64,
    /// User-mode ticks of children it has waited for.
    pub cutime: u64,
    /// Kernel-mode ticks of children it has waited for.
    pub cstime: u64,
}

impl ProcStat {
    /// Ticks of the process itself.
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }
    /// Ticks of the children it has reaped.
    pub fn children(&self) -> u64 {
        self.cutime + self.cstime
    }
}

/// Parses one `/proc/<pid>/stat` line. `comm` may hold spaces and parentheses, so the fields
/// are counted from the last `)`.
pub fn parse_stat(text: &str) -> anyhow::Result<ProcStat> {
    let open = text.find('(').context("no '(' in stat")?;
    let close = text.rfind(')').context("no ')' in stat")?;
    if close < open {
        bail!("malformed stat line");
    }
    let pid: u32 = text[..open].trim().parse().context("pid")?;
    let comm = text[open + 1..close].to_owned();
    // Fields after `comm`, numbered from 3 (state) as in proc(5).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        rest.get(n - 3)
            .with_context(|| format!("stat has no field {n}"))?
            .parse()
            .with_context(|| format!("stat field {n}"))
    };
    Ok(ProcStat {
        pid,
        comm,
        state: rest
            .first()
            .and_then(|s| s.chars().next())
            .context("stat has no state")?,
        ppid: u32::try_from(field(4)?).context("ppid")?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// Reads `/proc/<pid>/stat`.
pub fn read_stat(pid: u32) -> anyhow::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stat(&text)
}

/// Ticks per second of the `/proc` time fields (`getconf CLK_TCK`; 100 on Linux in practice).
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Ticks of the children this process has reaped so far (wrk and pgbench once waited for).
pub fn reaped_children_ticks() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    Ok(parse_stat(&text)?.children())
}

/// PostgreSQL's CPU ticks at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgTicks {
    /// Every process of the cluster, including exited backends (the postmaster's children
    /// ticks): comparable between two instants however many backends came and went.
    pub total: u64,
    /// The live backends connected to one database (the server's pool connections).
    pub database_backends: u64,
}

/// Sums the CPU ticks of the cluster whose postmaster is `postmaster`; `database` names the
/// database whose backends are also counted apart (matched in their process title).
pub fn postgres_ticks(postmaster: u32, database: Option<&str>) -> anyhow::Result<PgTicks> {
    let main = read_stat(postmaster).context("reading the postmaster's CPU time")?;
    let mut ticks = PgTicks {
        total: main.own() + main.children(),
        database_backends: 0,
    };
    let needle = database.map(|d| format!(" {d} "));
    // A process may exit between the listing and the read: its time then already sits in the
    // postmaster's children ticks, read above or in the next snapshot.
    for (dir, stat) in children(postmaster)? {
        ticks.total += stat.own();
        if let Some(needle) = &needle {
            if is_backend_of(&dir, needle) {
                ticks.database_backends += stat.own();
            }
        }
    }
    Ok(ticks)
}

/// The `/proc` directory and stat of each process whose parent is `parent` (a process that
/// exits while it is listed is left out).
fn children(parent: u32) -> anyhow::Result<Vec<(std::path::PathBuf, ProcStat)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = read_stat(pid) else { continue };
        if stat.ppid == parent {
            found.push((entry.path(), stat));
        }
    }
    Ok(found)
}

/// Waits until the postmaster has reaped every backend of `database` (a client that just exited
/// leaves backends that are still exiting, or zombies, whose time is not yet in the postmaster's
/// children ticks). Bounded by a deadline.
pub fn wait_backends_reaped(postmaster: u32, database: &str) -> anyhow::Result<()> {
    let needle = format!(" {database} ");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pending = children(postmaster)?
            .into_iter()
            .filter(|(dir, stat)| stat.state == 'Z' || is_backend_of(dir, &needle))
            .count();
        if pending == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{pending} backends of {database} still not reaped after 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// True when the process title (`postgres: USER DATABASE HOST(PORT) STATE`) names the database.
fn is_backend_of(proc_dir: &Path, needle: &str) -> bool {
    std::fs::read(proc_dir.join("cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .contains(needle)
        })
        .unwrap_or(false)
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_comm() {
        let line = "4242 (my (odd) name) S 17 4242 4242 0 -1 4194560 120 0 0 0 \
                    305 41 7 3 20 0 4 0 1234 0 0";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "my (odd) name");
        assert_eq!(s.ppid, 17);
        assert_eq!(s.state, 'S');
        assert_eq!((s.utime, s.stime, s.cutime, s.cstime), (305, 41, 7, 3));
        assert_eq!(s.own(), 346);
        assert_eq!(s.children(), 10);
    }

    #[test]
    fn rejects_truncated_stat() {
        assert!(parse_stat("12 (x) S 1 2 3").is_err());
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn reads_own_stat_and_sees_reaped_children() {
        let me = read_stat(std::process::id()).expect("own stat");
        assert_eq!(me.pid, std::process::id());
        let before = reaped_children_ticks().expect("self stat");
        // A child that burns some CPU and is then waited for lands in our cutime/cstime.
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .expect("sh");
        assert!(status.success());
        let after = reaped_children_ticks().expect("self stat");
        assert!(after > before, "children ticks {before} -> {after}");
    }
}

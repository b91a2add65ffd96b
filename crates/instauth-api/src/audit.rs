//! The audit trail: handlers queue a record for every exchange attempt and one background task
//! writes them in batches, so an exchange never waits for the audit write.
//!
//! Nothing the server could keep is lost:
//! - while the database is away, the writer keeps the batch and retries it with capped
//!   exponential backoff; records keep queueing meanwhile, up to [`QUEUE_CAPACITY`], and only
//!   beyond that are they dropped — counted in `instauth_audit_records_dropped_total` and logged
//!   once per burst, when writing works again;
//! - a record the database rejects is isolated by splitting its batch, so the rest is written;
//! - strings are made storable ([`storable`]) when the record is queued, so a NUL or a control
//!   character can neither fail the insert on PostgreSQL nor forge a log line;
//! - rate-limited attempts are aggregated: one record per client and minute, with a count.
//!
//! Records older than the retention are deleted in small batches ([`prune`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use instauth_store::{NewAuditRecord, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most records waiting to be written; beyond it records are dropped (and counted) rather than
/// slowing exchanges down or growing memory without bound.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most records per write.
pub const BATCH: usize = 500;
/// How long a busy writer lets the next batch gather.
const LINGER: Duration = Duration::from_millis(5);
/// The audit outcome of a rate-limited attempt (aggregated per client and minute).
pub const RATE_LIMITED: &str = "rate_limited";
/// Longest stored text field, in characters (after escaping).
const MAX_FIELD: usize = 256;
/// Backoff while the database is away.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long shutdown waits for the last records when the database does not answer.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);

/// `s` with every character that does not belong in a stored or logged field escaped as
/// `\u{...}`: NUL (PostgreSQL text cannot hold it), the other C0 and C1 controls and DEL (a
/// newline or an ESC in a log line forges lines or repaints a terminal), and the Unicode
/// bidirectional overrides and isolates (which make text read in a different order than it is).
/// A backslash is doubled so that an escape cannot be faked. Borrowed when nothing changes.
pub fn storable(s: &str) -> Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || c == '\\'
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if unsafe_char(c) => {
                let _ = fmt::Write::write_fmt(&mut out, format_args!("\\u{{{:x}}}", c as u32));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A client-supplied value, escaped with [`storable`] when displayed (for log fields).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&storable(self.0))
    }
}

fn field(s: &mut String) {
    if let Cow::Owned(escaped) = storable(s) {
        *s = escaped;
    }
    if s.chars().count() > MAX_FIELD {
        *s = s.chars().take(MAX_FIELD).collect();
    }
}

/// Makes every text field of `r` storable and bounded.
pub fn sanitize(r: &mut NewAuditRecord) {
    field(&mut r.instance_id);
    field(&mut r.agent_name);
    field(&mut r.remote_addr);
    if let Some(reason) = r.reason.as_mut() {
        field(reason);
    }
}

enum Msg {
    Record(NewAuditRecord),
    Flush(oneshot::Sender<()>),
    /// Write what is queued (giving up after [`SHUTDOWN_DEADLINE`]), answer, and stop.
    Shutdown(oneshot::Sender<()>),
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Msg")
    }
}

/// Records dropped, in total and since they were last logged.
struct Drops {
    total: AtomicU64,
    unlogged: AtomicU64,
    on_drop: Box<dyn Fn() + Send + Sync>,
}

impl Drops {
    fn add(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.unlogged.fetch_add(n, Ordering::Relaxed);
        for _ in 0..n {
            (self.on_drop)();
        }
    }

    /// Logs the drops of the burst that just ended, once.
    fn log_burst(&self) {
        let n = self.unlogged.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::error!(
                records = n,
                total = self.total.load(Ordering::Relaxed),
                "Audit records were dropped: the queue was full (the database was slow or away) \
                 or the database rejected them."
            );
        }
    }
}

/// Handle used by handlers to queue records. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    drops: Arc<Drops>,
}

impl fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditSink")
    }
}

/// The background writer.
#[derive(Debug)]
pub struct AuditWriter {
    sink: AuditSink,
    task: tokio::task::JoinHandle<()>,
}

impl AuditSink {
    /// Queues a record (made storable first); returns false if the queue is full and the record
    /// was dropped (and counted).
    pub fn record(&self, mut r: NewAuditRecord) -> bool {
        sanitize(&mut r);
        if self.tx.try_send(Msg::Record(r)).is_ok() {
            true
        } else {
            self.drops.add(1);
            false
        }
    }

    /// Records dropped since start.
    pub fn dropped_total(&self) -> u64 {
        self.drops.total.load(Ordering::Relaxed)
    }

    /// Waits until every record queued before this call is written (or given up on).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the writer on the current runtime; `on_drop` is called for every dropped record (the
/// metrics counter).
pub fn start(store: Store, on_drop: impl Fn() + Send + Sync + 'static) -> (AuditSink, AuditWriter) {
    let (tx, rx) = mpsc::channel::<Msg>(QUEUE_CAPACITY);
    let drops = Arc::new(Drops {
        total: AtomicU64::new(0),
        unlogged: AtomicU64::new(0),
        on_drop: Box::new(on_drop),
    });
    let sink = AuditSink { tx, drops };
    let task = tokio::spawn(run(store, rx, sink.drops.clone()));
    (sink.clone(), AuditWriter { sink, task })
}

/// Rate-limited attempts of one client in one minute.
type LimitedKey = (String, i64);

struct Writer {
    store: Store,
    drops: Arc<Drops>,
    batch: Vec<NewAuditRecord>,
    limited: HashMap<LimitedKey, NewAuditRecord>,
}

fn minute(r: &NewAuditRecord) -> i64 {
    r.time.and_utc().timestamp().div_euclid(60)
}

impl Writer {
    fn push(&mut self, mut r: NewAuditRecord) {
        if r.outcome == RATE_LIMITED {
            // The limiter counts per client IP, and a client that knocks over many connections
            // is one client: the aggregate names the IP, whatever ports the attempts came from.
            if let Ok(peer) = r.remote_addr.parse::<std::net::SocketAddr>() {
                r.remote_addr = peer.ip().to_string();
            }
            let key = (r.remote_addr.clone(), minute(&r));
            self.limited
                .entry(key)
                .and_modify(|agg| agg.count = agg.count.saturating_add(r.count.max(1)))
                .or_insert(r);
        } else {
            self.batch.push(r);
        }
    }

    /// Moves the aggregates of minutes that are over (or all of them) into the batch.
    fn close_minutes(&mut self, all: bool) {
        let now = chrono::Utc::now().timestamp().div_euclid(60);
        let closed: Vec<LimitedKey> = self
            .limited
            .keys()
            .filter(|(_, m)| all || *m < now)
            .cloned()
            .collect();
        for key in closed {
            if let Some(r) = self.limited.remove(&key) {
                self.batch.push(r);
            }
        }
    }

    /// Writes the batch: retries while the database is away, isolates rejected records.
    async fn write(&mut self, deadline: Option<tokio::time::Instant>) {
        if self.batch.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.batch);
        let mut delay = RETRY_MIN;
        loop {
            match self.store.insert_audit(&records).await {
                Ok(()) => {
                    self.drops.log_burst();
                    return;
                }
                Err(e) if self.rejected(&e).await => {
                    self.isolate(records).await;
                    self.drops.log_burst();
                    return;
                }
                Err(e) => {
                    if deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d) {
                        tracing::error!(error = %e, records = records.len(), "Giving up on audit records at shutdown: the database does not answer.");
                        self.drops.add(records.len() as u64);
                        return;
                    }
                    tracing::warn!(error = %e, records = records.len(), retry_in = ?delay, "Writing audit records failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// True when the database answered and refused the records (rather than being away).
    async fn rejected(&self, e: &StoreError) -> bool {
        !e.is_unavailable() && self.store.ping().await.is_ok()
    }

    /// Writes `records` by halves until each rejected record stands alone, then drops those.
    async fn isolate(&self, records: Vec<NewAuditRecord>) {
        let mut work = vec![records];
        while let Some(mut part) = work.pop() {
            if part.is_empty() {
                continue;
            }
            match self.store.insert_audit(&part).await {
                Ok(()) => {}
                Err(e) if part.len() == 1 => {
                    tracing::error!(error = %e, outcome = %part[0].outcome, "The database rejected an audit record; it is dropped.");
                    self.drops.add(1);
                }
                Err(_) => {
                    let half = part.split_off(part.len() / 2);
                    work.push(half);
                    work.push(part);
                }
            }
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Msg>, drops: Arc<Drops>) {
    let mut w = Writer {
        store,
        drops,
        batch: Vec::with_capacity(BATCH),
        limited: HashMap::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => Some(m),
                None => break,
            },
            _ = tick.tick() => None,
        };
        let mut flushes = Vec::new();
        let mut next = first;
        // Take whatever else is already queued, up to a batch.
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => w.push(r),
                Msg::Flush(done) => flushes.push(done),
                Msg::Shutdown(done) => {
                    // Everything queued before the request was sent is ahead of it.
                    while let Ok(Msg::Record(r)) = rx.try_recv() {
                        w.push(r);
                    }
                    w.close_minutes(true);
                    w.write(Some(tokio::time::Instant::now() + SHUTDOWN_DEADLINE))
                        .await;
                    for f in flushes {
                        let _ = f.send(());
                    }
                    let _ = done.send(());
                    return;
                }
            }
            if w.batch.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        w.close_minutes(!flushes.is_empty());
        let busy = w.batch.len() > 1;
        w.write(None).await;
        for done in flushes {
            let _ = done.send(());
        }
        // More than one record was waiting: the server is busy, so let the next batch gather
        // for a moment (one transaction per dozens of exchanges rather than per handful). The
        // records are already answered; they only reach the table a few milliseconds later.
        if busy {
            tokio::time::sleep(LINGER).await;
        }
    }
    w.close_minutes(true);
    w.write(Some(tokio::time::Instant::now() + SHUTDOWN_DEADLINE))
        .await;
}

impl AuditWriter {
    /// Writes everything queued so far (waiting at most a few seconds for an absent database)
    /// and stops the task.
    pub async fn shutdown(self) {
        let AuditWriter { sink, task } = self;
        let (tx, rx) = oneshot::channel();
        let limit = SHUTDOWN_DEADLINE + Duration::from_secs(1);
        let asked = tokio::time::timeout(limit, sink.tx.send(Msg::Shutdown(tx))).await;
        if !matches!(asked, Ok(Ok(()))) || tokio::time::timeout(limit, rx).await.is_err() {
            tracing::error!("The audit writer did not finish in time; queued records are lost.");
        }
        task.abort();
        sink.drops.log_burst();
    }
}

/// Deletes records older than `retention`, now and then every ten minutes, a thousand at a
/// time. Runs until its task is dropped with the runtime.
pub async fn prune(store: Store, retention: Duration) {
    const CHUNK: i64 = 1000;
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tick.tick().await;
        let cutoff = match instauth_store::now().checked_sub_signed(retention) {
            Some(c) => c,
            None => continue,
        };
        let mut deleted = 0usize;
        loop {
            match store.delete_audit_before(cutoff, CHUNK).await {
                Ok(n) => {
                    deleted += n;
                    if (n as i64) < CHUNK {
                        break;
                    }
                    // Let requests and the audit writer in between batches.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Deleting old audit records failed; trying again later.");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(records = deleted, cutoff = %cutoff.and_utc(), "Deleted audit records past the retention.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_escapes_what_could_forge_or_fail() {
        assert!(matches!(storable("main-1"), Cow::Borrowed(_)));
        assert_eq!(storable("a\nb"), "a\\u{a}b");
        assert_eq!(storable("nul\0"), "nul\\u{0}");
        assert_eq!(storable("\u{1b}[31m"), "\\u{1b}[31m");
        assert_eq!(storable("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(storable("\u{85}"), "\\u{85}");
        assert_eq!(
            storable("a\\u{a}"),
            "a\\\\u{a}",
            "an escape cannot be faked"
        );
        assert_eq!(storable("é日本"), "é日本");
    }

    #[test]
    fn sanitize_bounds_fields() {
        let mut r = NewAuditRecord {
            time: instauth_store::now(),
            provider: instauth_types::Provider::Aws,
            instance_id: "i\0".repeat(500),
            agent_name: "dev\r\nFAKE LINE".into(),
            outcome: "ok".into(),
            agent_id: None,
            remote_addr: "127.0.0.1:1".into(),
            reason: Some("\u{1b}".into()),
            count: 1,
            uid: uuid::Uuid::new_v4(),
        };
        sanitize(&mut r);
        assert_eq!(r.instance_id.chars().count(), MAX_FIELD);
        assert!(!r.instance_id.contains('\0'));
        assert_eq!(r.agent_name, "dev\\u{d}\\u{a}FAKE LINE");
        assert_eq!(r.reason.as_deref(), Some("\\u{1b}"));
    }
}

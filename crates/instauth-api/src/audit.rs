//! Audit records are queued by handlers and written in batches by one background task, so an
//! exchange never waits for the audit write. `AuditWriter::shutdown` flushes what is queued.

use instauth_store::{NewAuditRecord, Store};
use tokio::sync::{mpsc, oneshot};

/// Most records held in memory; beyond it records are dropped (and counted) rather than
/// slowing exchanges down.
pub const QUEUE_CAPACITY: usize = 10_000;
/// Most records per write.
pub const BATCH: usize = 500;

enum Msg {
    Record(NewAuditRecord),
    Flush(oneshot::Sender<()>),
}

/// Handle used by handlers to queue records. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// The background writer.
#[derive(Debug)]
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl AuditSink {
    /// Queues a record; returns false if the queue is full and the record was dropped.
    pub fn record(&self, r: NewAuditRecord) -> bool {
        self.tx.try_send(Msg::Record(r)).is_ok()
    }

    /// Waits until every record queued before this call is written (or failed to write).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write(store: &Store, batch: &mut Vec<NewAuditRecord>) {
    if batch.is_empty() {
        return;
    }
    if let Err(e) = store.insert_audit(batch).await {
        tracing::error!(error = %e, records = batch.len(), "Writing audit records failed; they are lost.");
    }
    batch.clear();
}

/// Starts the writer on the current runtime.
pub fn start(store: Store) -> (AuditSink, AuditWriter) {
    let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE_CAPACITY);
    let task = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(first) = rx.recv().await {
            let mut flushes = Vec::new();
            let mut next = Some(first);
            // Take whatever else is already queued, up to a batch.
            while let Some(msg) = next {
                match msg {
                    Msg::Record(r) => batch.push(r),
                    Msg::Flush(done) => flushes.push(done),
                }
                if batch.len() >= BATCH {
                    write(&store, &mut batch).await;
                }
                next = rx.try_recv().ok();
            }
            write(&store, &mut batch).await;
            for done in flushes {
                let _ = done.send(());
            }
        }
    });
    (AuditSink { tx: tx.clone() }, AuditWriter { tx, task })
}

impl AuditWriter {
    /// Writes everything queued so far and stops the task.
    pub async fn shutdown(self) {
        AuditSink {
            tx: self.tx.clone(),
        }
        .flush()
        .await;
        self.task.abort();
        let _ = self.task.await;
    }
}

//! Group commit, shared by the heartbeat writes and the exchange's candidate lookups: each
//! request queues and waits for the one statement that carries its batch; a single task per
//! store and kind sends that statement for everything queued meanwhile.
//!
//! The window adapts to load: an idle task takes a lone request at once (no added latency),
//! while one statement runs the next batch gathers, and a kind may let a busy batch gather a
//! little longer ([`Kind::LINGER`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{Inner, Result, Store, StoreError};

/// Requests waiting beyond this make callers wait to queue (backpressure, not memory).
const QUEUE: usize = 65_536;

/// One kind of batched statement.
pub(crate) trait Kind: Send + Sync + 'static {
    type Request: Send + 'static;
    type Response: Clone + Send + 'static;
    /// Most requests in one statement.
    const MAX: usize;
    /// When more than one request was waiting: gather at most this long more, or until this
    /// many are queued.
    const LINGER: Option<(Duration, usize)>;
    /// Runs one batch: one answer per request, in order.
    fn run(
        store: &Store,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Response>>> + Send;
}

struct Job<K: Kind> {
    request: K::Request,
    done: oneshot::Sender<Result<K::Response, Arc<StoreError>>>,
}

/// The queue of one kind for one store (its task starts on first use).
pub(crate) struct Batcher<K: Kind> {
    tx: OnceLock<mpsc::Sender<Job<K>>>,
    batches: Arc<AtomicU64>,
}

impl<K: Kind> Default for Batcher<K> {
    fn default() -> Self {
        Batcher {
            tx: OnceLock::new(),
            batches: Arc::default(),
        }
    }
}

impl<K: Kind> Batcher<K> {
    /// Statements sent so far (one per batch).
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// The error a waiter reports for a failed batch: unavailable stays unavailable (503 with
/// Retry-After), anything else is a database error.
fn shared(e: &StoreError) -> StoreError {
    if e.is_unavailable() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Batch(e.to_string())
    }
}

async fn task<K: Kind>(
    inner: Weak<Inner>,
    mut rx: mpsc::Receiver<Job<K>>,
    batches: Arc<AtomicU64>,
) {
    let mut queued: Vec<Job<K>> = Vec::with_capacity(K::MAX);
    while rx.recv_many(&mut queued, K::MAX).await > 0 {
        if let (Some((linger, enough)), true) = (K::LINGER, queued.len() > 1) {
            let until = tokio::time::Instant::now() + linger;
            while queued.len() < enough {
                let room = K::MAX - queued.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut queued, room)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let store = Store { inner };
        let (requests, waiters): (Vec<_>, Vec<_>) =
            queued.drain(..).map(|j| (j.request, j.done)).unzip();
        let result = K::run(&store, &requests).await.map_err(Arc::new);
        batches.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(answers) if answers.len() == waiters.len() => {
                for (done, answer) in waiters.into_iter().zip(answers) {
                    // A caller that stopped waiting (its client went away) is fine.
                    let _ = done.send(Ok(answer));
                }
            }
            Ok(_) => {
                let e = Arc::new(StoreError::Batch(
                    "a batch lost track of its requests".into(),
                ));
                for done in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for done in waiters {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Store {
    /// Queues `request` on the batcher `pick` selects and waits for its batch's answer.
    pub(crate) async fn batched<K: Kind>(
        &self,
        pick: impl Fn(&Inner) -> &Batcher<K>,
        request: K::Request,
    ) -> Result<K::Response> {
        let b = pick(&self.inner);
        let tx = b.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(task::<K>(
                Arc::downgrade(&self.inner),
                rx,
                b.batches.clone(),
            ));
            tx
        });
        let gone = || StoreError::Unavailable("the batch writer stopped".into());
        let (done, wait) = oneshot::channel();
        tx.send(Job { request, done }).await.map_err(|_| gone())?;
        match wait.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(shared(&e)),
            Err(_) => Err(gone()),
        }
    }
}

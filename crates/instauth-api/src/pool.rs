//! [`VerifyPool`]: the bounded pool the proofs' CPU work runs on (DESIGN.md "Where the work
//! runs"): tokio's blocking threads, at most [`VerifyPool::size`] of them at once.
//!
//! Work is queued, and each of those threads takes jobs until the queue is empty: under load
//! one hand-off to a blocking thread carries many proofs, instead of one wake-up of a blocking
//! thread (and one sleep) per proof. An idle pool starts a thread for the first job as it
//! always did, so a lone proof waits for nothing.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// Why the pool did not run a verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Every slot stayed taken for the whole wait: the server is saturated with proofs.
    #[error("all {size} verification slots stayed busy for {}s", waited.as_secs())]
    Busy {
        /// Slots of the pool.
        size: usize,
        /// How long the proof waited.
        waited: Duration,
    },
    /// The verification panicked (a bug; logged as an internal error).
    #[error("the verification task failed: {0}")]
    Failed(String),
}

/// A job's state: queued until a pool thread claims it, or abandoned first by a caller that
/// stopped waiting (timed out, or its request went away), in which case it never runs.
const QUEUED: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Pool threads running now (each drains `jobs` until it is empty); at most `size`.
    threads: usize,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A job never panics while holding the lock (jobs run outside it, under catch_unwind).
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs queued jobs until none is left, then gives its slot back.
    fn drain(&self) {
        loop {
            let job = {
                let mut q = self.lock();
                match q.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        q.threads -= 1;
                        return;
                    }
                }
            };
            job();
        }
    }
}

/// A bounded pool for synchronous verification work: at most [`VerifyPool::size`]
/// verifications run at once, on tokio's blocking threads, and a proof waits at most
/// [`VerifyPool::wait`] for its turn. Cheap to clone (clones share the queue and the bound).
#[derive(Clone)]
pub struct VerifyPool {
    shared: Arc<Shared>,
    size: usize,
    wait: Duration,
}

impl std::fmt::Debug for VerifyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyPool")
            .field("size", &self.size)
            .field("wait", &self.wait)
            .field("available", &self.available())
            .finish()
    }
}

/// Marks the job abandoned if the caller stops waiting before a pool thread claimed it.
struct Abandon(Arc<AtomicU8>);

impl Drop for Abandon {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl VerifyPool {
    /// How long a proof waits for a slot by default before it is answered 503.
    pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

    /// A pool running at most `size` (at least 1) verifications at once; a proof waits at most
    /// `wait` for a slot.
    pub fn new(size: usize, wait: Duration) -> Self {
        VerifyPool {
            shared: Arc::default(),
            size: size.max(1),
            wait,
        }
    }

    /// One slot per core the process may use ([`std::thread::available_parallelism`]), and
    /// [`VerifyPool::DEFAULT_WAIT`].
    pub fn sized_to_cores() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores, Self::DEFAULT_WAIT)
    }

    /// How many verifications run at most at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How long a proof waits at most for a slot.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Slots free right now (for tests and diagnostics).
    pub fn available(&self) -> usize {
        self.size.saturating_sub(self.shared.lock().threads)
    }

    /// Runs `work` on a pool thread once a slot is free. Work that has started always
    /// finishes (its slot is busy until it does), even if the caller has given up; work that
    /// is still queued when the caller gives up, or after `wait`, never starts.
    pub async fn run<T, F>(&self, work: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let claim = Arc::clone(&state);
        let job: Job = Box::new(move || {
            if claim
                .compare_exchange(QUEUED, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            let done = std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a verification panicked".to_owned());
                PoolError::Failed(text)
            });
            // The caller may be gone; the work is done either way.
            let _ = tx.send(done);
        });
        let abandon = Abandon(state);
        let start_thread = {
            let mut q = self.shared.lock();
            q.jobs.push_back(job);
            let start = q.threads < self.size;
            if start {
                q.threads += 1;
            }
            start
        };
        if start_thread {
            let shared = Arc::clone(&self.shared);
            // The handle is not awaited: the thread reports through each job's channel.
            drop(tokio::task::spawn_blocking(move || shared.drain()));
        }
        match tokio::time::timeout(self.wait, &mut rx).await {
            Ok(done) => done.unwrap_or_else(|_| Err(self.lost())),
            // Still queued: give up (the job will be skipped). Claimed: it runs now, wait.
            Err(_) => match abandon.0.compare_exchange(
                QUEUED,
                ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Err(PoolError::Busy {
                    size: self.size,
                    waited: self.wait,
                }),
                Err(_) => rx.await.unwrap_or_else(|_| Err(self.lost())),
            },
        }
    }

    /// A claimed job whose result never came: its thread went away (the runtime shut down).
    fn lost(&self) -> PoolError {
        PoolError::Failed("the verification thread stopped before answering".into())
    }
}

impl Default for VerifyPool {
    /// [`VerifyPool::sized_to_cores`].
    fn default() -> Self {
        Self::sized_to_cores()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// Polls `cond` until it holds, failing after 10 s.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
        }
    }

    /// A job holding the only slot of a one-slot pool until released.
    struct Held {
        release: mpsc::Sender<()>,
        job: tokio::task::JoinHandle<Result<Result<(), mpsc::RecvError>, PoolError>>,
    }

    impl Held {
        async fn take(pool: &VerifyPool) -> Held {
            let (release, held) = mpsc::channel::<()>();
            let job = {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || held.recv()).await })
            };
            until("the slot to be taken", || pool.available() == 0).await;
            Held { release, job }
        }

        async fn release(self) {
            self.release.send(()).unwrap();
            self.job.await.unwrap().unwrap().unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_runs_more_than_size_jobs_at_once_and_runs_them_all() {
        let pool = VerifyPool::new(2, Duration::from_secs(30));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..64usize {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(200));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                })
                .await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap().unwrap(), i * 2);
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} jobs ran at once");
        until("the slots to come back", || pool.available() == 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queued_job_past_its_wait_is_busy_and_never_runs() {
        let pool = VerifyPool::new(1, Duration::from_millis(100));
        let held = Held::take(&pool).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let started = Instant::now();
        let busy = pool
            .run(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .await;
        assert!(
            matches!(busy, Err(PoolError::Busy { size: 1, .. })),
            "{busy:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        held.release().await;
        until("the slot to come back", || pool.available() == 1).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0, "an abandoned job ran");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_that_started_finishes_past_the_wait() {
        let pool = VerifyPool::new(1, Duration::from_millis(20));
        let answer = pool
            .run(|| {
                std::thread::sleep(Duration::from_millis(100));
                42
            })
            .await;
        assert_eq!(answer.unwrap(), 42);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_is_an_error_and_the_pool_goes_on() {
        let pool = VerifyPool::new(1, Duration::from_secs(5));
        let failed = pool.run(|| -> u8 { panic!("boom") }).await;
        assert!(
            matches!(&failed, Err(PoolError::Failed(m)) if m == "boom"),
            "{failed:?}"
        );
        assert_eq!(pool.run(|| 1).await.unwrap(), 1);
        until("the slot to come back", || pool.available() == 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_caller_leaves_its_queued_job_unrun() {
        let pool = VerifyPool::new(1, Duration::from_secs(30));
        let held = Held::take(&pool).await;
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.run(move || {
                    r.fetch_add(1, Ordering::SeqCst);
                })
                .await
            })
        };
        until("the job to be queued", || {
            pool.shared.lock().jobs.len() == 1
        })
        .await;
        waiting.abort();
        let _ = waiting.await;
        held.release().await;
        until("the slot to come back", || pool.available() == 1).await;
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a job whose caller left ran");
    }

    #[test]
    fn the_default_pool_has_a_slot_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let pool = VerifyPool::default();
        assert_eq!(pool.size(), cores);
        assert_eq!(pool.wait(), VerifyPool::DEFAULT_WAIT);
        assert_eq!(pool.available(), cores);
        assert_eq!(VerifyPool::new(0, Duration::ZERO).size(), 1);
    }
}

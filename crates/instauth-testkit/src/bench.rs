//! The one harness of the workspace's criterion benches (feature `bench`).
//!
//! - [`criterion`]: the settings every bench runs with.
//! - [`Comparison`]: subjects measured against a baseline, as a ratio that survives a noisy
//!   machine and as criterion benchmarks in one group.
//! - [`against_raw_rsa`]: the verifier benches' comparison with a raw RSA verify.
//! - [`bench_main!`](crate::bench_main): a bench's `main`, with those settings.
//! - [`runtime`]: the tokio runtime of benches that drive async code over loopback.
//!
//! Criterion measures one function after another, so load from other processes that comes and
//! goes skews a ratio between two of its results. A [`Comparison`] therefore first alternates
//! short batches of the baseline and the subject and compares the fastest batch of each (the one
//! least disturbed) and the median of per-round ratios, then lets criterion measure both.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
pub use criterion::Criterion;
use ring::signature::{
    UnparsedPublicKey, VerificationAlgorithm, RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
    RSA_PKCS1_2048_8192_SHA256,
};

use crate::TestKey;

#[doc(hidden)]
pub use criterion as __criterion;

/// A bench's `main`: criterion's group and main with the settings of [`criterion`], running
/// the given `fn(&mut Criterion)` targets in order.
///
/// ```no_run
/// fn verify(c: &mut instauth_testkit::bench::Criterion) {
///     c.bench_function("nothing", |b| b.iter(|| ()));
/// }
/// instauth_testkit::bench_main!(verify);
/// ```
#[macro_export]
macro_rules! bench_main {
    ($($target:path),+ $(,)?) => {
        $crate::bench::__criterion::criterion_group! {
            name = benches;
            config = $crate::bench::criterion();
            targets = $($target),+
        }
        $crate::bench::__criterion::criterion_main!(benches);
    };
}

/// Interleaved rounds of a [`Comparison`].
pub const ROUNDS: usize = 40;
/// Calls per batch in each round of a [`Comparison`].
pub const BATCH: usize = 50;

/// Criterion with 1 s warm-up and 3 s measurement per function: enough for the microsecond
/// functions measured here, short enough to run every bench on a shared machine.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// A multi-threaded runtime with two workers (the machine's size) and every driver enabled.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A [`Comparison`] in `group` against the irreducible part of verifying a proof: a raw ring
/// PKCS#1 v1.5 SHA-256 verify of `key`'s signature over `msg`, named `raw_ring_rsa1024_verify`
/// or `raw_ring_rsa2048_verify` after the key's size. The key is parsed on every call, as ring
/// does for every RSA verify, so verifiers and baseline pay alike.
pub fn against_raw_rsa<'c>(
    c: &'c mut Criterion,
    group: &str,
    key: TestKey,
    msg: &[u8],
) -> Comparison<'c, impl FnMut()> {
    let (alg, name): (&'static dyn VerificationAlgorithm, _) = if key.is_1024() {
        (
            &RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
            "raw_ring_rsa1024_verify",
        )
    } else {
        (&RSA_PKCS1_2048_8192_SHA256, "raw_ring_rsa2048_verify")
    };
    let public = key.pkcs1_public_der();
    let sig = key.sign_sha256(msg);
    let msg = msg.to_vec();
    Comparison::new(c, group, name, move || {
        UnparsedPublicKey::new(alg, &public)
            .verify(black_box(&msg), black_box(&sig))
            .unwrap()
    })
}

/// The interleaved measurement of one subject against its baseline.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    /// Fastest per-call time of the baseline.
    pub baseline: Duration,
    /// Fastest per-call time of the subject.
    pub subject: Duration,
    /// `subject / baseline` of the fastest batches.
    pub min_ratio: f64,
    /// Median over rounds of `subject batch / baseline batch`.
    pub median_ratio: f64,
}

/// Subjects measured against one baseline, in one criterion group.
///
/// ```no_run
/// # let mut c = instauth_testkit::bench::criterion();
/// use instauth_testkit::bench::Comparison;
/// let mut cmp = Comparison::new(&mut c, "demo", "raw", || {
///     std::hint::black_box(1 + 1);
/// });
/// cmp.subject("wrapped", || {
///     std::hint::black_box(2 + 2);
/// });
/// cmp.finish();
/// ```
pub struct Comparison<'c, B> {
    group: BenchmarkGroup<'c, WallTime>,
    name: String,
    baseline: B,
}

impl<'c, B: FnMut()> Comparison<'c, B> {
    /// Opens criterion group `group` and measures `baseline` in it as `baseline_name`.
    pub fn new(c: &'c mut Criterion, group: &str, baseline_name: &str, mut baseline: B) -> Self {
        let mut g = c.benchmark_group(group);
        g.bench_function(baseline_name, |b| b.iter(&mut baseline));
        Comparison {
            group: g,
            name: group.to_owned(),
            baseline,
        }
    }

    /// Prints the interleaved ratio of `subject` to the baseline as one line,
    /// `ratio GROUP/NAME: ...` (the format docs/BENCHMARKS.md quotes), then measures `subject`
    /// in the group as `name`.
    pub fn subject(&mut self, name: &str, mut subject: impl FnMut()) -> Ratio {
        let r = interleaved_ratio(&mut self.baseline, &mut subject);
        println!(
            "ratio {}/{name}: fastest batches {:.2}x ({:.1} us vs raw {:.1} us), median of rounds {:.2}x",
            self.name,
            r.min_ratio,
            r.subject.as_secs_f64() * 1e6,
            r.baseline.as_secs_f64() * 1e6,
            r.median_ratio
        );
        self.group.bench_function(name, |b| b.iter(&mut subject));
        r
    }

    /// Closes the criterion group (its summary is printed then).
    pub fn finish(self) {
        self.group.finish();
    }
}

/// [`ROUNDS`] rounds of [`BATCH`] baseline calls then [`BATCH`] subject calls.
fn interleaved_ratio(mut baseline: impl FnMut(), mut subject: impl FnMut()) -> Ratio {
    let mut best_b = Duration::MAX;
    let mut best_s = Duration::MAX;
    let mut ratios = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..BATCH {
            baseline();
        }
        let b = t.elapsed();
        let t = Instant::now();
        for _ in 0..BATCH {
            subject();
        }
        let s = t.elapsed();
        best_b = best_b.min(b);
        best_s = best_s.min(s);
        ratios.push(s.as_secs_f64() / b.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let n = u32::try_from(BATCH).unwrap_or(u32::MAX);
    Ratio {
        baseline: best_b / n,
        subject: best_s / n,
        min_ratio: best_s.as_secs_f64() / best_b.as_secs_f64(),
        median_ratio: ratios[ratios.len() / 2],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subject that does twice the baseline's work measures about twice as slow.
    #[test]
    fn the_ratio_follows_the_work() {
        fn work(n: u64) -> u64 {
            (0..n).fold(0u64, |a, i| {
                std::hint::black_box(a.wrapping_mul(31).wrapping_add(i))
            })
        }
        let r = interleaved_ratio(
            || {
                work(2_000);
            },
            || {
                work(4_000);
            },
        );
        assert!(
            (1.3..3.0).contains(&r.min_ratio),
            "fastest batches {:.2}x",
            r.min_ratio
        );
        assert!(r.subject > r.baseline);
    }
}

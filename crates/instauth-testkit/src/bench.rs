//! Overhead ratios that survive a noisy machine.
//!
//! Criterion measures one function after another, so load from other processes that comes and
//! goes skews a ratio between two of its results. [`interleaved_ratio`] alternates short
//! batches of the baseline and the subject and compares the fastest batch of each (the one
//! least disturbed) and the median of per-round ratios.

use std::time::{Duration, Instant};

/// The outcome of [`interleaved_ratio`].
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

/// Runs `rounds` rounds of `batch` baseline calls then `batch` subject calls.
pub fn interleaved_ratio(
    rounds: usize,
    batch: usize,
    mut baseline: impl FnMut(),
    mut subject: impl FnMut(),
) -> Ratio {
    let mut best_b = Duration::MAX;
    let mut best_s = Duration::MAX;
    let mut ratios = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..batch {
            baseline();
        }
        let b = t.elapsed();
        let t = Instant::now();
        for _ in 0..batch {
            subject();
        }
        let s = t.elapsed();
        best_b = best_b.min(b);
        best_s = best_s.min(s);
        ratios.push(s.as_secs_f64() / b.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let n = u32::try_from(batch).unwrap_or(u32::MAX).max(1);
    Ratio {
        baseline: best_b / n,
        subject: best_s / n,
        min_ratio: best_s.as_secs_f64() / best_b.as_secs_f64(),
        median_ratio: ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN),
    }
}

/// Prints a [`Ratio`] as one line (`name: ...`), the format docs/BENCHMARKS.md quotes.
pub fn print_ratio(name: &str, r: Ratio) {
    println!(
        "ratio {name}: fastest batches {:.2}x ({:.1} us vs raw {:.1} us), median of rounds {:.2}x",
        r.min_ratio,
        r.subject.as_secs_f64() * 1e6,
        r.baseline.as_secs_f64() * 1e6,
        r.median_ratio
    );
}

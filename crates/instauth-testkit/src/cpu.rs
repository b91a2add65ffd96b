//! CPU time of the calling thread, for tests that bound the cost of an input.
//!
//! Read from `/proc/thread-self/schedstat` (nanoseconds on the CPU), falling back to the
//! clock-tick counters of `/proc/thread-self/stat`. Wall time would count the other processes
//! sharing the machine; this counts only the work the thread did.

use std::time::Duration;

/// CPU time consumed by the calling thread so far. Panics where `/proc` is unavailable (the
/// tests that use it run on Linux).
pub fn thread_cpu_time() -> Duration {
    if let Some(ns) = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|ns| *ns > 0)
    {
        return Duration::from_nanos(ns);
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // Fields after the parenthesised command name: utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // Clock ticks are 1/100 s on Linux (USER_HZ).
    Duration::from_millis((fields[11] + fields[12]) * 10)
}

/// Runs `f` `runs` times and returns the mean thread CPU time per run, with `f`'s last result.
pub fn mean_cpu_time<T>(runs: u32, mut f: impl FnMut() -> T) -> (Duration, T) {
    assert!(runs > 0);
    let start = thread_cpu_time();
    let mut last = f();
    for _ in 1..runs {
        last = f();
    }
    ((thread_cpu_time() - start) / runs, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_work_not_waiting() {
        let before = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        let slept = thread_cpu_time() - before;
        assert!(slept < Duration::from_millis(20), "sleeping cost {slept:?}");

        // A fixed amount of work: its CPU time is positive and never more than the wall time
        // it took (other load on the machine only stretches the wall time).
        let wall = std::time::Instant::now();
        let (busy, digest) = mean_cpu_time(1, || {
            let block = vec![7u8; 1 << 20];
            let mut d = ring::digest::digest(&ring::digest::SHA256, &block);
            for _ in 0..30 {
                d = ring::digest::digest(&ring::digest::SHA256, &[&block[..], d.as_ref()].concat());
            }
            d
        });
        let wall = wall.elapsed();
        assert_eq!(digest.as_ref().len(), 32);
        assert!(busy > Duration::from_millis(1), "work cost only {busy:?}");
        assert!(
            busy <= wall + Duration::from_millis(10),
            "{busy:?} CPU in {wall:?}"
        );
    }
}

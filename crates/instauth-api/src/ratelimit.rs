//! Per-client rate limit of the exchange endpoints: a proof verification costs RSA operations,
//! so one client cannot make the server spend unbounded CPU. Over the limit the client gets 429
//! with `Retry-After`.
//!
//! GCRA buckets from `governor`, keyed by the client address, IPv6 clients by their /64 (one
//! host owns a whole /64 and could otherwise rotate through it). The keyed state is a sharded
//! map; it is bounded by forgetting buckets that have refilled (they would start full anyway)
//! every minute, and, if an address sweep fills it in between, at once — without a scan per
//! request. Past the cap, unknown clients share one overflow bucket.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter as Gcra};

/// Most client buckets kept between clean-ups.
pub const MAX_CLIENTS: usize = 100_000;
/// How often refilled buckets are forgotten.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// The rate-limit key of a client: its IPv4 address, or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Token buckets keyed by client.
pub struct RateLimiter {
    limiter: Option<Gcra<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>>,
    clock: DefaultClock,
    started: Instant,
    /// Milliseconds after `started` of the last clean-up.
    cleaned_at: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("enabled", &self.limiter.is_some())
            .finish()
    }
}

/// The shared bucket of clients that arrive while the table is full.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl RateLimiter {
    /// `per_second` requests per second per client with bursts of twice that; 0 disables.
    pub fn new(per_second: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second.saturating_mul(2)).unwrap_or(rate);
            Gcra::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimiter {
            limiter,
            clock: DefaultClock::default(),
            started: Instant::now(),
            cleaned_at: AtomicU64::new(0),
        }
    }

    /// Takes one token for `ip`; `Err(seconds)` says when the next one is available.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        self.maybe_clean(limiter);
        let mut key = client_key(ip);
        if limiter.len() >= MAX_CLIENTS {
            limiter.retain_recent();
            if limiter.len() >= MAX_CLIENTS {
                key = OVERFLOW;
            }
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// Forgets refilled buckets once a minute (one caller does it; the others go on).
    fn maybe_clean(&self, limiter: &Gcra<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock>) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.cleaned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= CLEANUP_EVERY.as_millis() as u64
            && self
                .cleaned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Client buckets held now.
    pub fn clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_per_client() {
        let l = RateLimiter::new(2);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..4 {
            assert_eq!(l.check(ip), Ok(()));
        }
        assert_eq!(l.check(ip), Err(1));
        assert_eq!(l.check(other), Ok(()), "per client");
        assert!(RateLimiter::new(0).check(ip).is_ok());
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let l = RateLimiter::new(1);
        for i in 0..2u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, i + 1));
            assert_eq!(l.check(ip), Ok(()));
        }
        let same_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3));
        assert!(l.check(same_64).is_err(), "the /64 is one client");
        let next_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert_eq!(l.check(next_64), Ok(()));
        assert_eq!(l.clients(), 2);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}

//! Results of a run: the markdown table for docs/BENCHMARKS.md and the targets of issue 11.

use std::fmt::Write;

/// One load's numbers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadResult {
    /// `exchange`, `heartbeat` or `pgbench -S`.
    pub name: String,
    /// Completed requests (transactions for pgbench).
    pub requests: u64,
    /// Requests (transactions) per second.
    pub rps: f64,
    /// Median latency, µs (wrk only).
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs (wrk only).
    pub p99_us: Option<f64>,
    /// Database transactions per request (PostgreSQL, server loads only).
    pub xacts_per_request: Option<f64>,
    /// CPU of the server process per request, µs.
    pub server_cpu_us: Option<f64>,
    /// CPU of every PostgreSQL process per request, µs.
    pub pg_cpu_us: Option<f64>,
    /// Of which the server's own (pooled, long-lived) backends, µs.
    pub pg_backends_cpu_us: Option<f64>,
    /// CPU of the load generator (wrk or pgbench) per request, µs.
    pub client_cpu_us: Option<f64>,
    /// Requests answered with a status ≥ 400 or not answered (socket errors, timeouts).
    pub failures: u64,
}

/// One backend at one fleet size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunResult {
    /// `postgres` or `sqlite`.
    pub backend: String,
    /// Agents registered.
    pub agents: usize,
    /// Distinct proofs and session tokens rotated by the loads.
    pub distinct: usize,
    /// Seconds per load.
    pub seconds: u64,
    /// wrk connections.
    pub connections: u32,
    /// Time to register the agents, s.
    pub seed_s: f64,
    /// Time to sign the proofs, s.
    pub proofs_s: f64,
    /// Time to exchange each proof once for its token, s.
    pub tokens_s: f64,
    /// The loads, in the order they ran; the last is pgbench.
    pub loads: Vec<LoadResult>,
    /// Load average when the run started and when it ended.
    pub loadavg: (String, String),
    /// With `--baseline`: `baseline N` or `candidate N`, the binary and round of this run; with
    /// `--compare-agents` and `--rounds`: `round N`.
    pub binary: Option<String>,
}

impl RunResult {
    /// The load of that name.
    pub fn load(&self, name: &str) -> Option<&LoadResult> {
        self.loads.iter().find(|l| l.name == name)
    }

    /// Whether this run measured the baseline binary.
    pub fn is_baseline(&self) -> bool {
        self.binary
            .as_deref()
            .is_some_and(|b| b.starts_with("baseline"))
    }

    /// The backend, and the binary when there are two.
    fn label(&self) -> String {
        match &self.binary {
            Some(b) => format!("{} · {b}", self.backend),
            None => self.backend.clone(),
        }
    }

    /// `pgbench -S` transactions per second of the run.
    pub fn pgbench_tps(&self) -> Option<f64> {
        self.load(PGBENCH).map(|l| l.rps)
    }
}

/// Name of the pgbench yardstick load.
pub const PGBENCH: &str = "pgbench -S";
/// Name of the exchange load.
pub const EXCHANGE: &str = "exchange";
/// Name of the heartbeat load.
pub const HEARTBEAT: &str = "heartbeat";
/// Heartbeat interval the fleet size is computed for (SPEC §6 default).
pub const HEARTBEAT_INTERVAL_S: f64 = 15.0;

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.filter(|x| x.is_finite())
        .map(f)
        .unwrap_or_else(|| "—".into())
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

/// Thousands separated by a thin space-free comma, e.g. `12,345`.
fn count(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The markdown table of the runs.
pub fn markdown(runs: &[RunResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| backend | agents | load | req/s | × pgbench -S | p50 | p99 | DB xacts/req | server CPU µs/req | PostgreSQL CPU µs/req (server's backends) | client CPU µs/req | failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let tps = r.pgbench_tps();
        for l in &r.loads {
            let ratio = match tps {
                Some(t) if t > 0.0 => format!("{:.3}", l.rps / t),
                _ => "—".into(),
            };
            let pg = match (l.pg_cpu_us, l.pg_backends_cpu_us) {
                (Some(all), Some(own)) => format!("{all:.0} ({own:.0})"),
                (Some(all), None) => format!("{all:.0}"),
                _ => "—".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.label(),
                count(r.agents as f64),
                l.name,
                count(l.rps),
                ratio,
                opt(l.p50_us, ms),
                opt(l.p99_us, ms),
                opt(l.xacts_per_request, |x| format!("{x:.2}")),
                opt(l.server_cpu_us, |x| format!("{x:.0}")),
                pg,
                opt(l.client_cpu_us, |x| format!("{x:.0}")),
                l.failures,
            );
        }
    }
    out
}

/// Setup times of the runs.
pub fn setup_lines(runs: &[RunResult]) -> String {
    let mut out = String::new();
    for r in runs {
        let _ = writeln!(
            out,
            "{} {} agents: seeding {:.1} s ({} agents/s), signing {} proofs {:.1} s, \
             {} exchanges for tokens {:.1} s; load average {} → {}",
            r.label(),
            count(r.agents as f64),
            r.seed_s,
            count(r.agents as f64 / r.seed_s.max(1e-9)),
            count(r.distinct as f64),
            r.proofs_s,
            count(r.distinct as f64),
            r.tokens_s,
            r.loadavg.0,
            r.loadavg.1,
        );
    }
    out
}

/// One target of issue 11's table.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is measured.
    pub what: String,
    /// The measurement, formatted.
    pub measured: String,
    /// The target, formatted.
    pub target: String,
    /// Whether it is met.
    pub met: bool,
}

fn target(what: &str, measured: String, target: &str, met: bool) -> Target {
    Target {
        what: what.into(),
        measured,
        target: target.into(),
        met,
    }
}

/// The targets of issue 11 that this run measured: every one on PostgreSQL, the fleet size on
/// SQLite.
pub fn targets(r: &RunResult) -> Vec<Target> {
    let mut out = Vec::new();
    let tps = r.pgbench_tps().unwrap_or(f64::NAN);
    let postgres = r.backend == "postgres";
    if let Some(h) = r.load(HEARTBEAT) {
        let fleet = h.rps * HEARTBEAT_INTERVAL_S;
        if postgres {
            let ratio = h.rps / tps;
            out.push(target(
                "heartbeats/s ÷ pgbench -S",
                format!("{ratio:.3}"),
                "≥ 0.45",
                ratio >= 0.45,
            ));
            let x = h.xacts_per_request.unwrap_or(f64::NAN);
            out.push(target(
                "DB transactions per heartbeat",
                format!("{x:.3}"),
                "≤ 0.05",
                x <= 0.05,
            ));
            let pg = h.pg_cpu_us.unwrap_or(f64::NAN);
            out.push(target(
                "PostgreSQL CPU per heartbeat",
                format!("{pg:.0} µs"),
                "≤ 15 µs",
                pg <= 15.0,
            ));
        }
        let need = if postgres { 300_000.0 } else { 200_000.0 };
        out.push(target(
            "fleet carried at 15 s heartbeats",
            count(fleet),
            if postgres {
                "≥ 300,000"
            } else {
                "≥ 200,000"
            },
            fleet >= need,
        ));
    }
    if let (Some(e), true) = (r.load(EXCHANGE), postgres) {
        let ratio = e.rps / tps;
        out.push(target(
            "exchanges/s ÷ pgbench -S",
            format!("{ratio:.3}"),
            "≥ 0.35",
            ratio >= 0.35,
        ));
        let cpu = e.server_cpu_us.unwrap_or(f64::NAN);
        out.push(target(
            "server CPU per exchange",
            format!("{cpu:.0} µs"),
            "≤ 60 µs",
            cpu <= 60.0,
        ));
        let p99 = e.p99_us.unwrap_or(f64::NAN);
        out.push(target("exchange p99", ms(p99), "< 5 ms", p99 < 5000.0));
    }
    out
}

/// The scale table and target: the large fleet's p50 (and p99, req/s) over the small one's.
/// With several rounds (each size run once per round, alternating) the ratio is of the means,
/// and the per-round range follows it.
pub fn compare(small: &[&RunResult], large: &[&RunResult]) -> (String, Vec<Target>) {
    let (Some(s0), Some(l0)) = (small.first(), large.first()) else {
        return (String::new(), Vec::new());
    };
    let mut out = format!(
        "| load ({}) | p50 {} → {} agents | p99 | req/s |\n|---|---|---|---|\n",
        l0.backend,
        count(s0.agents as f64),
        count(l0.agents as f64)
    );
    let mut checks = Vec::new();
    for name in [EXCHANGE, HEARTBEAT] {
        let values = |runs: &[&RunResult], f: fn(&LoadResult) -> Option<f64>| {
            runs.iter()
                .filter_map(|r| f(r.load(name)?))
                .collect::<Vec<f64>>()
        };
        // Mean large over mean small, and the range of the rounds' own ratios.
        let ratio = |f: fn(&LoadResult) -> Option<f64>| {
            let (a, b) = (values(small, f), values(large, f));
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            if a.is_empty() || b.is_empty() || mean(&a) <= 0.0 {
                return (f64::NAN, String::new());
            }
            let rounds: Vec<f64> = a.iter().zip(&b).map(|(a, b)| b / a).collect();
            let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let range = if rounds.len() > 1 {
                format!(" ({lo:.2}–{hi:.2})")
            } else {
                String::new()
            };
            (mean(&b) / mean(&a), range)
        };
        let (p50, p50_range) = ratio(|l| l.p50_us);
        if p50.is_nan() {
            continue;
        }
        let (p99, _) = ratio(|l| l.p99_us);
        let (rps, _) = ratio(|l| Some(l.rps));
        let _ = writeln!(
            out,
            "| {name} | {p50:.2}×{p50_range} | {p99:.2}× | {rps:.2}× |"
        );
        checks.push(target(
            &format!(
                "{name} p50 at {} vs {} agents",
                count(l0.agents as f64),
                count(s0.agents as f64)
            ),
            format!("{p50:.2}×{p50_range}"),
            "≤ 1.2×",
            p50 <= 1.2,
        ));
    }
    (out, checks)
}

/// What issue 11's table asks of the server relative to the one it measured ("today" →
/// target): a candidate run beside that server can be judged on any host by these ratios.
struct Relative {
    /// The load and measurement, as [`versus`] names them.
    load: &'static str,
    measured: &'static str,
    /// The target's name in issue 11's table.
    what: &'static str,
    /// Target over "today".
    limit: f64,
    /// "today" → target, as the issue gives them.
    from: &'static str,
}

const RELATIVE_TARGETS: [Relative; 3] = [
    Relative {
        load: EXCHANGE,
        measured: "p99",
        what: "exchange p99",
        limit: 5.0 / 10.0,
        from: "10 → 5 ms",
    },
    Relative {
        load: EXCHANGE,
        measured: "server CPU",
        what: "server CPU per exchange",
        limit: 60.0 / 105.0,
        from: "105 → 60 µs",
    },
    Relative {
        load: HEARTBEAT,
        measured: "PostgreSQL CPU",
        what: "PostgreSQL CPU per heartbeat",
        limit: 15.0 / 225.0,
        from: "225 → 15 µs",
    },
];

/// The candidate's runs beside the baseline's (`--baseline`), for one backend and fleet size:
/// each measurement's mean over the rounds, and the candidate's mean over the baseline's with
/// the range of the per-round ratios (round N of each ran back to back). Also the targets of
/// issue 11 that its table gives in absolute numbers, as ratios to the server it measured; they
/// hold only when the baseline is that server.
pub fn versus(runs: &[&RunResult]) -> (String, Vec<Target>) {
    let (base, cand): (Vec<&RunResult>, Vec<&RunResult>) =
        runs.iter().partition(|r| r.is_baseline());
    let Some(first) = runs.first() else {
        return (String::new(), Vec::new());
    };
    let mut out = format!(
        "| {} agents, {} | measurement | baseline | candidate | candidate ÷ baseline (per round) |\n\
         |---|---|---|---|---|\n",
        count(first.agents as f64),
        first.backend
    );
    type Metric = (
        &'static str,
        fn(&RunResult, &LoadResult) -> Option<f64>,
        fn(f64) -> String,
    );
    let metrics: [Metric; 6] = [
        ("req/s", |_, l| Some(l.rps), count),
        (
            "× pgbench -S",
            |r, l| r.pgbench_tps().filter(|t| *t > 0.0).map(|t| l.rps / t),
            |x| format!("{x:.3}"),
        ),
        ("p50", |_, l| l.p50_us, ms),
        ("p99", |_, l| l.p99_us, ms),
        (
            "server CPU",
            |_, l| l.server_cpu_us,
            |x| format!("{x:.0} µs"),
        ),
        (
            "PostgreSQL CPU",
            |_, l| l.pg_cpu_us,
            |x| format!("{x:.0} µs"),
        ),
    ];
    let mut relative = Vec::new();
    for name in [EXCHANGE, HEARTBEAT] {
        let values = |runs: &[&RunResult], f: fn(&RunResult, &LoadResult) -> Option<f64>| {
            runs.iter()
                .filter_map(|r| f(r, r.load(name)?))
                .collect::<Vec<f64>>()
        };
        for (what, f, fmt) in metrics {
            let (b, c) = (values(&base, f), values(&cand, f));
            if b.is_empty() || c.is_empty() {
                continue;
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let ratio = mean(&c) / mean(&b);
            let rounds: Vec<f64> = b.iter().zip(&c).map(|(b, c)| c / b).collect();
            let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let _ = writeln!(
                out,
                "| {name} | {what} | {} | {} | {ratio:.2}× ({lo:.2}–{hi:.2}) |",
                fmt(mean(&b)),
                fmt(mean(&c)),
            );
            for t in &RELATIVE_TARGETS {
                if (t.load, t.measured) == (name, what) && first.backend == "postgres" {
                    relative.push(target(
                        t.what,
                        format!("{ratio:.2}×"),
                        &format!("≤ {:.3}× ({})", t.limit, t.from),
                        ratio <= t.limit,
                    ));
                }
            }
        }
    }
    (out, relative)
}

/// The targets as a markdown table.
pub fn targets_markdown(label: &str, targets: &[Target]) -> String {
    let mut out = format!("| {label} | measured | target | met |\n|---|---|---|---|\n");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.what,
            t.measured,
            t.target,
            if t.met { "yes" } else { "**no**" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, rps: f64) -> LoadResult {
        LoadResult {
            name: name.into(),
            requests: (rps * 20.0) as u64,
            rps,
            ..Default::default()
        }
    }

    fn run(backend: &str) -> RunResult {
        RunResult {
            backend: backend.into(),
            agents: 100_000,
            distinct: 20_000,
            seconds: 20,
            connections: 64,
            loads: vec![
                LoadResult {
                    p50_us: Some(3000.0),
                    p99_us: Some(10_000.0),
                    server_cpu_us: Some(105.0),
                    ..load(EXCHANGE, 10_000.0)
                },
                LoadResult {
                    p50_us: Some(1000.0),
                    p99_us: Some(4000.0),
                    xacts_per_request: Some(2.8),
                    pg_cpu_us: Some(225.0),
                    pg_backends_cpu_us: Some(200.0),
                    ..load(HEARTBEAT, 5_000.0)
                },
                load(PGBENCH, 40_000.0),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn issue_11_baseline_misses_every_postgres_target() {
        let t = targets(&run("postgres"));
        assert_eq!(t.len(), 7);
        assert!(t.iter().all(|t| !t.met), "{t:?}");
        let fleet = t
            .iter()
            .find(|t| t.what.starts_with("fleet"))
            .expect("fleet");
        assert_eq!(fleet.measured, "75,000");
    }

    #[test]
    fn targets_met_when_numbers_are_good() {
        let mut r = run("postgres");
        r.loads[0].rps = 15_000.0;
        r.loads[0].server_cpu_us = Some(50.0);
        r.loads[0].p99_us = Some(4_000.0);
        r.loads[1].rps = 20_000.0;
        r.loads[1].xacts_per_request = Some(0.01);
        r.loads[1].pg_cpu_us = Some(10.0);
        assert!(targets(&r).iter().all(|t| t.met), "{:?}", targets(&r));
    }

    #[test]
    fn sqlite_checks_only_the_fleet() {
        let mut r = run("sqlite");
        r.loads[1].rps = 14_000.0;
        let t = targets(&r);
        assert_eq!(t.len(), 1);
        assert!(t[0].met);
        assert_eq!(t[0].measured, "210,000");
    }

    #[test]
    fn table_has_a_row_per_load_with_ratio() {
        let table = markdown(&[run("postgres")]);
        assert_eq!(table.lines().count(), 2 + 3);
        assert!(table.contains("| postgres | 100,000 | heartbeat | 5,000 | 0.125 | 1.00 ms | 4.00 ms | 2.80 | — | 225 (200) |"), "{table}");
        assert!(table.contains("| pgbench -S | 40,000 | 1.000 |"), "{table}");
    }

    #[test]
    fn comparison_is_large_over_small() {
        let small = run("postgres");
        let mut large = run("postgres");
        large.agents = 1_000_000;
        large.loads[0].p50_us = Some(3300.0);
        large.loads[1].p50_us = Some(1500.0);
        let (table, checks) = compare(&[&small], &[&large]);
        assert!(table.contains("| exchange | 1.10× |"), "{table}");
        assert!(checks[0].met);
        assert!(!checks[1].met);
    }

    #[test]
    fn comparison_over_rounds_is_of_the_means_with_the_rounds_range() {
        let sized = |agents: usize, exchange_p50: f64| {
            let mut r = run("postgres");
            r.agents = agents;
            r.loads[0].p50_us = Some(exchange_p50);
            r
        };
        let small = [sized(1_000, 2000.0), sized(1_000, 2000.0)];
        let large = [sized(1_000_000, 2600.0), sized(1_000_000, 2200.0)];
        let (table, checks) = compare(&[&small[0], &small[1]], &[&large[0], &large[1]]);
        // Means 2000 and 2400: 1.20×; the rounds 1.30× and 1.10×.
        assert!(
            table.contains("| exchange | 1.20× (1.10–1.30) |"),
            "{table}"
        );
        assert!(checks[0].met, "{checks:?}");
        assert_eq!(checks[0].measured, "1.20× (1.10–1.30)");
    }

    #[test]
    fn versus_gives_candidate_over_baseline_per_round() {
        let labelled = |label: &str, cpu: f64, p99: f64| {
            let mut r = run("postgres");
            r.binary = Some(label.into());
            r.loads[0].server_cpu_us = Some(cpu);
            r.loads[0].p99_us = Some(p99);
            r
        };
        let runs = [
            labelled("baseline 1", 200.0, 20_000.0),
            labelled("candidate 1", 100.0, 12_000.0),
            labelled("baseline 2", 300.0, 20_000.0),
            labelled("candidate 2", 120.0, 8_000.0),
        ];
        let refs: Vec<&RunResult> = runs.iter().collect();
        let (table, relative) = versus(&refs);
        // Means 250 and 110 µs; rounds 0.50 and 0.40.
        assert!(
            table.contains("| exchange | server CPU | 250 µs | 110 µs | 0.44× (0.40–0.50) |"),
            "{table}"
        );
        assert!(
            table.contains("| heartbeat | PostgreSQL CPU | 225 µs | 225 µs | 1.00× (1.00–1.00) |"),
            "{table}"
        );
        let met: Vec<(&str, bool)> = relative.iter().map(|t| (t.what.as_str(), t.met)).collect();
        assert_eq!(
            met,
            [
                ("exchange p99", true),
                ("server CPU per exchange", true),
                ("PostgreSQL CPU per heartbeat", false)
            ]
        );
        assert!(markdown(&runs).contains("| postgres · candidate 2 | 100,000 | exchange |"));
        // SQLite has no targets of this kind.
        let sqlite: Vec<RunResult> = runs
            .iter()
            .map(|r| RunResult {
                backend: "sqlite".into(),
                ..r.clone()
            })
            .collect();
        assert!(versus(&sqlite.iter().collect::<Vec<_>>()).1.is_empty());
    }

    #[test]
    fn counts_have_separators() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(1_234_567.0), "1,234,567");
    }
}

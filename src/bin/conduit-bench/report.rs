//! Results: latency percentiles and throughput per scenario, the printed table, the JSON
//! file, and the side-by-side comparison of two JSON files.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What one scenario measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    pub scenario: String,
    /// Operations timed (requests, messages, syncs, pages).
    pub count: usize,
    /// Wall-clock time of the timed part.
    pub seconds: f64,
    /// Operations per second over the timed part.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Server RSS right after the scenario, when the server process is known.
    pub rss_mib: Option<f64>,
    /// What else is worth knowing (response sizes, events read).
    pub note: String,
}

impl Outcome {
    pub fn new(scenario: &str, latencies: &mut [Duration], wall: Duration, note: String) -> Self {
        latencies.sort_unstable();
        let ms = |p: f64| percentile(latencies, p).as_secs_f64() * 1000.0;
        let seconds = wall.as_secs_f64();
        Self {
            scenario: scenario.to_owned(),
            count: latencies.len(),
            seconds,
            per_second: if seconds > 0.0 { latencies.len() as f64 / seconds } else { 0.0 },
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            rss_mib: None,
            note,
        }
    }
}

/// Nearest-rank percentile of an ascending slice.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A whole run against one server.
#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    pub label: String,
    pub url: String,
    /// Server RSS before any scenario ran.
    pub idle_rss_mib: Option<f64>,
    pub outcomes: Vec<Outcome>,
}

pub fn print_header() {
    println!(
        "{:<28} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}  note",
        "scenario", "count", "ops/s", "p50 ms", "p90 ms", "p99 ms", "RSS MiB"
    );
}

pub fn print_outcome(o: &Outcome) {
    let rss = o.rss_mib.map_or("-".to_owned(), |r| format!("{r:.1}"));
    println!(
        "{:<28} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9}  {}",
        o.scenario, o.count, o.per_second, o.p50_ms, o.p90_ms, o.p99_ms, rss, o.note
    );
}

/// The median of several runs of the same scenarios: per scenario (those every run has),
/// the median of each number, with how far the runs spread in its note.
pub fn median(runs: &[Run]) -> Result<Run, String> {
    let first = runs.first().ok_or("no runs to take the median of")?;
    let mid = |mut values: Vec<f64>| -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
    };
    let spread = |values: &[f64]| -> (f64, f64) {
        values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
    };
    let mut outcomes = Vec::new();
    for scenario in &first.outcomes {
        let all: Vec<&Outcome> = runs
            .iter()
            .filter_map(|run| run.outcomes.iter().find(|o| o.scenario == scenario.scenario))
            .collect();
        if all.len() != runs.len() {
            continue;
        }
        let of = |f: fn(&Outcome) -> f64| all.iter().map(|o| f(o)).collect::<Vec<f64>>();
        let rates = of(|o| o.per_second);
        let p50s = of(|o| o.p50_ms);
        let (rate_lo, rate_hi) = spread(&rates);
        let (p50_lo, p50_hi) = spread(&p50s);
        let rss: Vec<f64> = all.iter().filter_map(|o| o.rss_mib).collect();
        outcomes.push(Outcome {
            scenario: scenario.scenario.clone(),
            count: scenario.count,
            seconds: mid(of(|o| o.seconds)),
            per_second: mid(rates),
            p50_ms: mid(p50s),
            p90_ms: mid(of(|o| o.p90_ms)),
            p99_ms: mid(of(|o| o.p99_ms)),
            rss_mib: (rss.len() == all.len()).then(|| mid(rss)),
            note: format!(
                "median of {} runs (ops/s {rate_lo:.1}–{rate_hi:.1}, p50 {p50_lo:.2}–{p50_hi:.2} ms); {}",
                all.len(),
                scenario.note
            ),
        });
    }
    let idle: Vec<f64> = runs.iter().filter_map(|r| r.idle_rss_mib).collect();
    Ok(Run {
        label: first.label.clone(),
        url: first.url.clone(),
        idle_rss_mib: (idle.len() == runs.len()).then(|| mid(idle)),
        outcomes,
    })
}

/// A markdown table of two runs, scenario by scenario, with the ratio by which the first
/// is better: throughput first/second, latency and memory second/first.
pub fn compare(a: &Run, b: &Run) -> String {
    let mut out = format!(
        "| scenario | metric | {} | {} | {} better by |\n|---|---|---|---|---|\n",
        a.label, b.label, a.label
    );
    /// A compared metric: its name, digits shown, whether higher is better, and its value.
    type Metric = (&'static str, usize, bool, fn(&Outcome) -> f64);
    let ratio = |higher_is_better: bool, x: f64, y: f64| -> String {
        let r = if higher_is_better { x / y } else { y / x };
        if r.is_finite() { format!("{r:.1}×") } else { "-".to_owned() }
    };
    if let (Some(x), Some(y)) = (a.idle_rss_mib, b.idle_rss_mib) {
        out += &format!("| idle | RSS MiB | {x:.1} | {y:.1} | {} |\n", ratio(false, x, y));
    }
    for x in &a.outcomes {
        let Some(y) = b.outcomes.iter().find(|o| o.scenario == x.scenario) else { continue };
        let metrics: [Metric; 3] = [
            ("ops/s", 1, true, |o| o.per_second),
            ("p50 ms", 2, false, |o| o.p50_ms),
            ("p99 ms", 2, false, |o| o.p99_ms),
        ];
        for (metric, digits, higher_is_better, value) in metrics {
            let (vx, vy) = (value(x), value(y));
            out += &format!(
                "| {} | {metric} | {vx:.digits$} | {vy:.digits$} | {} |\n",
                x.scenario,
                ratio(higher_is_better, vx, vy)
            );
        }
        if let (Some(rx), Some(ry)) = (x.rss_mib, y.rss_mib) {
            out += &format!(
                "| {} | RSS MiB after | {rx:.1} | {ry:.1} | {} |\n",
                x.scenario,
                ratio(false, rx, ry)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let o = Outcome::new("x", &mut samples, Duration::from_secs(2), String::new());
        assert_eq!((o.p50_ms, o.p90_ms, o.p99_ms), (50.0, 90.0, 99.0));
        assert_eq!(o.per_second, 50.0);
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(percentile(&[Duration::from_millis(7)], 99.0), Duration::from_millis(7));
    }

    #[test]
    fn the_median_run_takes_each_numbers_median_and_notes_the_spread() {
        let run = |rate: f64, p50: f64| Run {
            label: "x".to_owned(),
            url: String::new(),
            idle_rss_mib: Some(rate / 10.0),
            outcomes: vec![Outcome {
                scenario: "send".to_owned(),
                count: 5,
                seconds: 1.0,
                per_second: rate,
                p50_ms: p50,
                p90_ms: p50,
                p99_ms: p50,
                rss_mib: Some(1.0),
                note: "n".to_owned(),
            }],
        };
        let m = median(&[run(100.0, 3.0), run(300.0, 1.0), run(200.0, 2.0)]).unwrap();
        assert_eq!(m.outcomes[0].per_second, 200.0);
        assert_eq!(m.outcomes[0].p50_ms, 2.0);
        assert_eq!(m.idle_rss_mib, Some(20.0));
        assert!(
            m.outcomes[0].note.contains("median of 3 runs (ops/s 100.0–300.0, p50 1.00–3.00 ms)"),
            "{}",
            m.outcomes[0].note
        );
        let even = median(&[run(100.0, 1.0), run(200.0, 3.0)]).unwrap();
        assert_eq!((even.outcomes[0].per_second, even.outcomes[0].p50_ms), (150.0, 2.0));
    }

    #[test]
    fn comparison_ratios_favour_the_faster_and_smaller() {
        let run = |label: &str, rate: f64, p50: f64, rss: f64| Run {
            label: label.to_owned(),
            url: String::new(),
            idle_rss_mib: Some(rss),
            outcomes: vec![Outcome {
                scenario: "send".to_owned(),
                count: 1,
                seconds: 1.0,
                per_second: rate,
                p50_ms: p50,
                p90_ms: p50,
                p99_ms: p50,
                rss_mib: None,
                note: String::new(),
            }],
        };
        let table = compare(&run("a", 1000.0, 1.0, 20.0), &run("b", 50.0, 20.0, 120.0));
        assert!(table.contains("| idle | RSS MiB | 20.0 | 120.0 | 6.0× |"), "{table}");
        assert!(table.contains("| send | ops/s | 1000.0 | 50.0 | 20.0× |"), "{table}");
        assert!(table.contains("| send | p50 ms | 1.00 | 20.00 | 20.0× |"), "{table}");
    }
}

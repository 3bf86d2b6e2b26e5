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
fn percentile(sorted: &[Duration], p: f64) -> Duration {
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

//! Collects the runs' samples and renders one Markdown table of medians and ratios.

use std::collections::BTreeMap;

use crate::{Args, System, median};

/// One measured number of one workload in one run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// One of [`METRICS`]' names.
    pub metric: &'static str,
    /// Its value, in the metric's unit.
    pub value: f64,
}

/// How a metric is compared.
struct Metric {
    name: &'static str,
    /// Smaller is better (latencies, CPU, gaps, failures).
    lower_is_better: bool,
    /// The goal, as written in the table.
    goal: &'static str,
}

/// Every metric, in table order.
const METRICS: &[Metric] = &[
    Metric {
        name: "pair p50 (ms)",
        lower_is_better: true,
        goal: ">= 2.5x faster",
    },
    Metric {
        name: "pair p99 (ms)",
        lower_is_better: true,
        goal: "<= 2 x etcd's p50",
    },
    Metric {
        name: "pair: cluster CPU per pair (ms)",
        lower_is_better: true,
        goal: "<= half",
    },
    Metric {
        name: "distinct: pairs/s",
        lower_is_better: false,
        goal: ">= 5x",
    },
    Metric {
        name: "distinct: cluster CPU per pair (ms)",
        lower_is_better: true,
        goal: "<= half",
    },
    Metric {
        name: "handoff: hand-offs/s",
        lower_is_better: false,
        goal: ">= 10x",
    },
    Metric {
        name: "handoff: cluster CPU per hand-off (ms)",
        lower_is_better: true,
        goal: "<= half",
    },
    Metric {
        name: "signal p50 (ms)",
        lower_is_better: true,
        goal: "<= half",
    },
    Metric {
        name: "signal p99 (ms)",
        lower_is_better: true,
        goal: "below etcd's",
    },
    Metric {
        name: "signal: cluster CPU per signal (ms)",
        lower_is_better: true,
        goal: "<= half",
    },
    Metric {
        name: "failover: longest gap (s)",
        lower_is_better: true,
        goal: "<= 1.0 s",
    },
    Metric {
        name: "failover: all tasks back (s)",
        lower_is_better: true,
        goal: "<= 1.5 s",
    },
    Metric {
        name: "failover: failed calls",
        lower_is_better: true,
        goal: "",
    },
    Metric {
        name: "sessions: held",
        lower_is_better: false,
        goal: "100,000",
    },
    Metric {
        name: "sessions: expired wrongly",
        lower_is_better: true,
        goal: "0",
    },
    Metric {
        name: "sessions: opened per second",
        lower_is_better: false,
        goal: "",
    },
    Metric {
        name: "sessions: cluster CPU while held (% of a core)",
        lower_is_better: true,
        goal: "<= half",
    },
    Metric {
        name: "sessions: client CPU while held (% of a core)",
        lower_is_better: true,
        goal: "",
    },
];

/// The metric named `name`, if there is one.
pub fn metric(name: &str) -> Option<&'static str> {
    METRICS.iter().find(|m| m.name == name).map(|m| m.name)
}

/// Every sample, by `(disturbed, metric, system)`.
pub struct Report {
    samples: BTreeMap<(bool, &'static str, &'static str), Vec<f64>>,
    started: String,
    etcd_version: String,
}

impl Report {
    /// An empty report.
    pub fn new(args: &Args) -> Report {
        let etcd_version = std::process::Command::new(&args.etcd)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| {
                let version = s
                    .lines()
                    .next()?
                    .strip_prefix("etcd Version:")?
                    .trim()
                    .to_owned();
                Some(format!("etcd {version}"))
            })
            .unwrap_or_else(|| "etcd (version unknown)".into());
        Report {
            samples: BTreeMap::new(),
            started: now_utc(),
            etcd_version,
        }
    }

    /// Adds one run's samples of one system.
    pub fn add(&mut self, system: System, disturbed: bool, samples: Vec<Sample>) {
        for sample in samples {
            assert!(
                METRICS.iter().any(|m| m.name == sample.metric),
                "unknown metric {}",
                sample.metric
            );
            self.samples
                .entry((disturbed, sample.metric, system.name()))
                .or_default()
                .push(sample.value);
        }
    }

    /// The table: medians over the runs of each system, the ratio and the goal.
    pub fn render(&self, args: &Args) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "dlock vs {}, {} ({}), {} run(s) each{}; medians over runs.\n\n",
            self.etcd_version,
            self.started,
            machine(),
            args.runs,
            if args.disturbed_runs > 0 {
                format!(", then {} disturbed by a busy process", args.disturbed_runs)
            } else {
                String::new()
            }
        ));
        for disturbed in [false, true] {
            if disturbed && args.disturbed_runs == 0 {
                continue;
            }
            if disturbed {
                out.push_str("\nDisturbed (one busy process competing for the 2 cores):\n\n");
            }
            out.push_str("| workload | etcd | dlock | dlock vs etcd | goal |\n");
            out.push_str("|---|---|---|---|---|\n");
            for metric in METRICS {
                let value = |system: &'static str| {
                    self.samples
                        .get(&(disturbed, metric.name, system))
                        .map(|v| median(&mut v.clone()))
                };
                let (etcd, dlock) = (value("etcd"), value("dlock"));
                if etcd.is_none() && dlock.is_none() {
                    continue;
                }
                let ratio = match (etcd, dlock) {
                    (Some(e), Some(d)) if e > 0.0 && d > 0.0 => {
                        if metric.lower_is_better {
                            format!("{:.2}x {}", e / d, if e >= d { "better" } else { "worse" })
                        } else {
                            format!("{:.2}x {}", d / e, if d >= e { "better" } else { "worse" })
                        }
                    }
                    _ => String::new(),
                };
                out.push_str(&format!(
                    "| {} | {} | {} | {ratio} | {} |\n",
                    metric.name,
                    fmt(etcd),
                    fmt(dlock),
                    metric.goal
                ));
            }
        }
        out
    }
}

fn fmt(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v.is_nan() => "-".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The date and time, UTC, from `date` (no time crate for one line).
fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Cores, memory and CPU model of this machine.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    format!("{cores} cores, {} GiB, {model}", mem_kib / (1 << 20))
}

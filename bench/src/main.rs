//! `dlock-vs-etcd`: one client driving a three-node dlock cluster and a three-member etcd 3.4
//! cluster through the same workloads, one after the other, and one table of medians and
//! ratios. Not a test: it asserts nothing about speed.
//!
//! For every run, each system gets a fresh cluster on loopback (fresh data directories), the
//! workloads run against it, and the cluster is stopped before the other system's starts, so
//! the two never share the machine. dlock goes first and etcd right after it, as the issue
//! that asked for this tool measured. The clients are the ones each project ships for Rust: the
//! async `dlock` client and `etcd-client` (etcd's Lock API, leases and watch), both on one
//! tokio runtime in this process. See `bench/README.md` for the workloads and the columns.

mod cluster;
mod report;
mod workloads;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::cluster::Cluster;
use crate::report::{Report, Sample};

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// Three `dlockd` nodes (the `dlockd` built beside this binary).
    Dlock,
    /// Three etcd members (`--etcd`, by default Debian's `/usr/bin/etcd`).
    Etcd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Dlock => "dlock",
            System::Etcd => "etcd",
        }
    }
}

/// The workloads (`bench/README.md` describes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    /// One task: uncontended lock + unlock pairs on one name; latency per pair.
    Pair,
    /// Many tasks, each on its own name: pairs per second.
    Distinct,
    /// Many tasks on one name: hand-offs per second.
    Handoff,
    /// Set an event (put a key) and time until a blocked waiter (watcher) returns.
    Signal,
    /// Many tasks on distinct names while the leader is killed (SIGKILL) and restarted.
    Failover,
    /// Many sessions (leases) held with their keepalives: how many, and the CPU they cost.
    Sessions,
}

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "dlock and etcd side by side: the same workloads, one table")]
pub struct Args {
    /// Runs per system (medians are over these).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Extra runs with a busy process competing for the CPU (reported separately).
    #[arg(long, default_value_t = 1)]
    pub disturbed_runs: usize,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pair,distinct,handoff,signal,failover,sessions"
    )]
    pub workloads: Vec<Workload>,
    /// Systems to run, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "dlock,etcd")]
    pub systems: Vec<System>,
    /// Pairs measured by `pair` (after 100 unmeasured ones).
    #[arg(long, default_value_t = 2000)]
    pub pairs: usize,
    /// Tasks of `distinct` and `failover`.
    #[arg(long, default_value_t = 64)]
    pub distinct_tasks: usize,
    /// Tasks of `handoff`.
    #[arg(long, default_value_t = 16)]
    pub handoff_tasks: usize,
    /// Seconds that `distinct` and `handoff` run for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Signals measured by `signal`.
    #[arg(long, default_value_t = 500)]
    pub signals: usize,
    /// Leader kills of `failover`.
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// Sessions (leases) that `sessions` opens.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Seconds that `sessions` holds them for, measuring the CPU their keepalives cost.
    #[arg(long, default_value_t = 60)]
    pub hold: u64,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd: PathBuf,
    /// Also write the table (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Internal: be the busy process of a disturbed run.
    #[arg(long, hide = true)]
    pub burn: bool,
    /// Internal: run one system's workloads (`SYSTEM:RUN`) and print the samples.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

fn main() {
    let args = Args::parse();
    if args.burn {
        burn();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args.child.clone() {
        Some(which) => runtime.block_on(child(args, &which)),
        None => runtime.block_on(run(args)),
    }
}

/// One system's cluster and workloads for one run, in a process of its own (so that nothing a
/// workload leaves behind, such as thousands of sessions' keepalive tasks, runs on while the
/// other system is measured). Prints `SAMPLE <tab> metric <tab> value` lines on stdout.
async fn child(args: Args, which: &str) {
    let (system, run) = which.split_once(':').expect("SYSTEM:RUN");
    let system = System::from_str(system, true).expect("a system");
    let run: usize = run.parse().expect("a run number");
    let mut cluster = Cluster::start(system, &args.etcd).await;
    for &workload in &args.workloads {
        for sample in workloads::run(&args, workload, &mut cluster, run).await {
            eprintln!("   {workload:?} {}: {}", sample.metric, sample.value);
            println!("SAMPLE\t{}\t{}", sample.metric, sample.value);
        }
    }
    cluster.stop().await;
}

/// Runs [`child`] for `system` and run `run` and collects its samples.
fn run_child(system: System, run: usize) -> Vec<Sample> {
    let exe = std::env::current_exe().expect("own executable");
    let output = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .args(["--child", &format!("{}:{run}", system.name())])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("start the run's process");
    assert!(
        output.status.success(),
        "the {} run {run} failed: {}",
        system.name(),
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("SAMPLE\t")?.split('\t');
            let metric = report::metric(parts.next()?)?;
            let value = parts.next()?.parse().ok()?;
            Some(Sample { metric, value })
        })
        .collect()
}

async fn run(args: Args) {
    let mut report = Report::new(&args);
    let total = args.runs + args.disturbed_runs;
    for run in 0..total {
        let disturbed = run >= args.runs;
        for &system in &args.systems {
            eprintln!(
                "== run {}/{total}{}: {}",
                run + 1,
                if disturbed { " (disturbed)" } else { "" },
                system.name()
            );
            let hog = disturbed.then(Hog::start);
            let samples = tokio::task::block_in_place(|| run_child(system, run));
            report.add(system, disturbed, samples);
            drop(hog);
        }
    }
    let table = report.render(&args);
    println!("{table}");
    if let Some(path) = &args.out {
        std::fs::write(path, &table).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// The busy process of a disturbed run: one thread spinning, at the default priority, until it
/// is killed (its parent's death kills it too).
fn burn() -> ! {
    // SAFETY: prctl only sets this process's parent-death signal.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// A running busy process (see [`burn`]), killed when dropped.
struct Hog(Child);

impl Hog {
    fn start() -> Hog {
        let exe = std::env::current_exe().expect("own executable");
        let child = Command::new(exe)
            .arg("--burn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start the busy process");
        Hog(child)
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Median of a list of numbers (`NaN` when empty).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Quantile `q` of durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i].as_secs_f64() * 1e3
}

/// Shorthand for a sample.
pub fn sample(metric: &'static str, value: f64) -> Sample {
    Sample { metric, value }
}

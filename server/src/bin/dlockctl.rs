//! `dlockctl`: a small admin CLI for a dlock cluster, over the `dlock.v1.Admin` service that
//! every dlockd node serves on its client port.
//!
//! ```text
//! dlockctl [--endpoint HOST:PORT]... status [--all]
//! dlockctl add-learner ID PEER_ADDR
//! dlockctl add-voter ID PEER_ADDR
//! dlockctl promote ID
//! dlockctl remove ID
//! dlockctl local [--dir DIR] [--namespace NAME]
//! ```
//!
//! `local` needs no cluster: it prints this host's `Local\` namespace (the shared-memory
//! segment of `DLOCK_LOCAL_DIR` / `DLOCK_LOCAL_NAMESPACE`): attached processes, objects with
//! their handles, owners and waiters, and blocked waits. It also reclaims dead processes'
//! handles, as any attach does.
//!
//! The endpoints (client addresses of any members, default `DLOCK_ENDPOINTS`, else
//! `127.0.0.1:7700`) are tried in order. A node that is not the leader answers `UNAVAILABLE`
//! with a `dlock-leader-hint` naming the leader's client address; `dlockctl` follows it. Calls
//! are retried (across the endpoints, with a short backoff) on `UNAVAILABLE` and connection
//! errors until `--timeout-ms` has passed; any other error ends the command at once. The exit
//! status is 0 on success, 1 on a failed call, 2 on bad usage.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use dlock_proto::v1 as pb;
use dlock_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// How long one TCP connect to a node may take before the next endpoint is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Longest pause between two rounds over the endpoints.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// First pause between two rounds over the endpoints.
const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// Command line of `dlockctl`.
#[derive(Debug, Parser)]
#[command(
    name = "dlockctl",
    version,
    about = "Administer a dlock cluster: status and membership (dlock.v1.Admin)."
)]
struct Cli {
    /// Client address of a cluster member (repeat, or comma-separate); any member will do,
    /// followers point to the leader.
    #[arg(
        long = "endpoint",
        env = "DLOCK_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7700"
    )]
    endpoints: Vec<String>,
    /// Give up after this many milliseconds of retrying (leader changes, nodes down).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Shows the answering node's Raft state and the members; with `--all`, every member's own
    /// state (asked by the answering node) and the leader's replication progress.
    Status {
        /// Ask every member for its own state.
        #[arg(long)]
        all: bool,
    },
    /// Adds a non-voting member that catches up (from a snapshot) before it is promoted.
    AddLearner {
        /// The new node's id (> 0, not a member yet).
        id: u64,
        /// Its peer (Raft transport) address, HOST:PORT.
        peer_addr: String,
    },
    /// Adds a voting member (prefer add-learner + promote for a node that must catch up).
    AddVoter {
        /// The new node's id (> 0, not a member yet).
        id: u64,
        /// Its peer (Raft transport) address, HOST:PORT.
        peer_addr: String,
    },
    /// Makes a learner a voter.
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Removes a member (voter or learner); removing the leader hands leadership over first.
    Remove {
        /// The member's id.
        id: u64,
    },
    /// Shows this host's `Local\` namespace (no cluster involved).
    Local {
        /// Directory of the segment file.
        #[arg(long, env = "DLOCK_LOCAL_DIR", default_value = "/dev/shm")]
        dir: std::path::PathBuf,
        /// Namespace name (default: `u<uid>`, as the client library's).
        #[arg(long, env = "DLOCK_LOCAL_NAMESPACE")]
        namespace: Option<String>,
    },
}

/// Why a command failed, as printed before exiting.
#[derive(Debug)]
struct Failure(String);

/// Turns `host:port` or `http://host:port` into an `http://host:port` URI.
fn normalise(endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// The leader's client address carried by a status, if any.
fn leader_hint(status: &Status) -> Option<String> {
    let value = status.metadata().get(dlock_proto::LEADER_HINT_METADATA)?;
    let hint = value.to_str().ok()?.trim();
    (!hint.is_empty()).then(|| normalise(hint))
}

/// Connects to one endpoint (lazily for the request, eagerly for the TCP connection).
async fn connect(uri: &str, attempt_timeout: Duration) -> Result<AdminClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(uri.to_owned())
        .map_err(|e| format!("bad endpoint {uri}: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(attempt_timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
    Ok(AdminClient::new(channel))
}

/// Runs one admin call against the cluster: tries the endpoints in order, follows leader hints,
/// retries `UNAVAILABLE` and connection failures with backoff until `timeout` has passed.
/// Returns the reply and the endpoint that gave it.
async fn call<T, F, Fut>(
    endpoints: &[String],
    timeout: Duration,
    what: &str,
    mut f: F,
) -> Result<(T, String), Failure>
where
    F: FnMut(AdminClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
{
    let deadline = Instant::now() + timeout;
    let configured: Vec<String> = endpoints.iter().map(|e| normalise(e)).collect();
    if configured.is_empty() {
        return Err(Failure("no endpoints given".into()));
    }
    let mut backoff = BACKOFF_MIN;
    let mut next = 0usize;
    let mut hinted: Option<String> = None;
    let mut hints_in_a_row = 0u32;
    // True when the last endpoint of the list was just tried: pause before the next round.
    let mut round_done = false;
    let mut last_error = String::from("no attempt made");
    // Set once an attempt failed in a way that may still have applied the change.
    let mut ambiguous = false;
    loop {
        let uri = match hinted.take() {
            Some(uri) => uri,
            None => {
                let uri = configured[next].clone();
                next = (next + 1) % configured.len();
                round_done = next == 0;
                uri
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure(format!(
                "{what}: gave up after {} ms; last error: {last_error}",
                timeout.as_millis()
            )));
        }
        match connect(&uri, left).await {
            Err(e) => last_error = e,
            Ok(client) => match f(client).await {
                Ok(reply) => return Ok((reply.into_inner(), uri)),
                Err(status) if status.code() == Code::Unavailable => {
                    last_error = format!("{uri}: {}", status.message());
                    if let Some(hint) = leader_hint(&status)
                        && hint != uri
                        && hints_in_a_row < 3
                    {
                        hints_in_a_row += 1;
                        eprintln!("dlockctl: {uri} is not the leader; trying {hint}");
                        hinted = Some(hint);
                        continue;
                    }
                    if !status.message().contains("not the leader") {
                        ambiguous = true;
                    }
                }
                Err(status) => {
                    let mut message = format!(
                        "{what} failed at {uri}: {:?}: {}",
                        status.code(),
                        status.message()
                    );
                    if ambiguous && status.code() == Code::InvalidArgument {
                        message.push_str(
                            " (an earlier attempt may have applied the change: \
                             check `dlockctl status --all`)",
                        );
                    }
                    return Err(Failure(message));
                }
            },
        }
        hints_in_a_row = 0;
        // Pause after each full round over the endpoints.
        if std::mem::take(&mut round_done) {
            let pause = backoff.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// One line describing a node's own Raft state.
fn node_line(n: &pb::NodeStatus) -> String {
    if !n.reachable {
        return format!("node {:<3} unreachable", n.node_id);
    }
    let leader = if n.leader_id == 0 {
        "none".to_owned()
    } else {
        n.leader_id.to_string()
    };
    format!(
        "node {:<3} {:<13} term {:<5} commit {:<8} applied {:<8} leader {:<4} client {:<21} reachable",
        n.node_id, n.role, n.term, n.commit, n.applied, leader, n.client_addr
    )
}

/// One line describing a member.
fn member_line(m: &pb::Member) -> String {
    let kind = if m.voter { "voter" } else { "learner" };
    let matched = if m.matched == 0 {
        "-".to_owned()
    } else {
        m.matched.to_string()
    };
    format!(
        "member {:<3} {:<7} peer {:<21} matched {matched}",
        m.node_id, kind, m.peer_addr
    )
}

/// Prints the member list of a membership change's reply.
fn print_members(members: &[pb::Member]) {
    println!("members:");
    for m in members {
        println!("  {}", member_line(m));
    }
}

/// `status [--all]`.
async fn status(endpoints: &[String], timeout: Duration, all: bool) -> Result<(), Failure> {
    let request = pb::ClusterStatusRequest { all };
    let (mut reply, mut answered_by) = call(endpoints, timeout, "status", |mut c| async move {
        c.status(request).await
    })
    .await?;
    // Only the leader knows the replication progress (`matched`): ask it when it is another
    // node and its client address is known.
    if all
        && let Some(own) = &reply.node
        && own.role != "LEADER"
        && let Some(leader) = reply
            .nodes
            .iter()
            .find(|n| n.reachable && n.node_id == own.leader_id && n.role == "LEADER")
        && !leader.client_addr.is_empty()
        && let Ok((from_leader, leader_uri)) = call(
            std::slice::from_ref(&leader.client_addr),
            timeout.min(Duration::from_secs(2)),
            "status",
            |mut c| async move { c.status(request).await },
        )
        .await
    {
        reply = from_leader;
        answered_by = leader_uri;
    }
    let own = reply
        .node
        .as_ref()
        .ok_or_else(|| Failure(format!("status from {answered_by}: reply without a node")))?;
    println!("answered by node {} at {answered_by}", own.node_id);
    if all {
        println!("nodes:");
        for n in &reply.nodes {
            println!("  {}", node_line(n));
        }
    } else {
        println!("  {}", node_line(own));
    }
    print_members(&reply.members);
    Ok(())
}

/// Runs the parsed command.
async fn run(cli: Cli) -> Result<(), Failure> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let endpoints = &cli.endpoints;
    let (reply, what) = match cli.command {
        Command::Local { .. } => unreachable!("handled before the runtime starts"),
        Command::Status { all } => return status(endpoints, timeout, all).await,
        Command::AddLearner { id, peer_addr } => {
            let request = pb::AddMemberRequest {
                node_id: id,
                peer_addr,
            };
            let call = call(endpoints, timeout, "add-learner", |mut c| {
                let request = request.clone();
                async move { c.add_learner(request).await }
            });
            (call.await?.0, format!("added node {id} as a learner"))
        }
        Command::AddVoter { id, peer_addr } => {
            let request = pb::AddMemberRequest {
                node_id: id,
                peer_addr,
            };
            let call = call(endpoints, timeout, "add-voter", |mut c| {
                let request = request.clone();
                async move { c.add_voter(request).await }
            });
            (call.await?.0, format!("added node {id} as a voter"))
        }
        Command::Promote { id } => {
            let request = pb::NodeRequest { node_id: id };
            let call = call(endpoints, timeout, "promote", |mut c| async move {
                c.promote_learner(request).await
            });
            (call.await?.0, format!("promoted node {id} to voter"))
        }
        Command::Remove { id } => {
            let request = pb::NodeRequest { node_id: id };
            let call = call(endpoints, timeout, "remove", |mut c| async move {
                c.remove_node(request).await
            });
            (call.await?.0, format!("removed node {id}"))
        }
    };
    println!("{what}");
    print_members(&reply.members);
    Ok(())
}

/// Prints the local namespace named by `dir` and `namespace`.
fn local(dir: std::path::PathBuf, namespace: Option<String>) -> Result<(), Failure> {
    // SAFETY: called from main before any other thread exists; the client library reads these
    // variables when it first attaches, below.
    unsafe {
        std::env::set_var("DLOCK_LOCAL_DIR", &dir);
        if let Some(ns) = &namespace {
            std::env::set_var("DLOCK_LOCAL_NAMESPACE", ns);
        }
    }
    let path = dlock::LocalNamespace::configured_path();
    if !path.exists() {
        return Err(Failure(format!(
            "no local namespace at {} (it is created by the first process that uses a Local\\ name)",
            path.display()
        )));
    }
    let snapshot = dlock::LocalNamespace::attach()
        .and_then(|ns| ns.snapshot())
        .map_err(|e| Failure(format!("{}: {e}", path.display())))?;
    println!(
        "namespace {}: {} processes, {} objects, {} blocked waits",
        snapshot.path.display(),
        snapshot.processes.len(),
        snapshot.objects.len(),
        snapshot.blocked_waits
    );
    for p in &snapshot.processes {
        let state = if p.alive {
            "alive"
        } else {
            "dead (not yet reclaimed)"
        };
        println!("  process slot {} pid {} {state}", p.slot, p.pid);
    }
    for o in &snapshot.objects {
        let name = o
            .name
            .as_deref()
            .map(|n| format!("Local\\{n}"))
            .unwrap_or_else(|| "(closed, held)".into());
        let state = match o.kind {
            dlock::ObjectKind::Mutex if o.owner_tid != 0 => format!("owned by tid {}", o.owner_tid),
            dlock::ObjectKind::Mutex if o.abandoned => "abandoned".into(),
            dlock::ObjectKind::Mutex => "free".into(),
            dlock::ObjectKind::Event => format!(
                "{} {}",
                if o.manual_reset { "manual" } else { "auto" },
                if o.signaled { "signaled" } else { "unsignaled" }
            ),
            dlock::ObjectKind::Semaphore => format!("count {}/{}", o.count, o.maximum),
        };
        println!(
            "  {:<9} {name} handles {} waiters {} {state}",
            o.kind.to_string(),
            o.handles,
            o.waiters
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Local { dir, namespace } => local(dir, namespace),
        _ => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run(cli)),
            Err(e) => Err(Failure(format!("cannot start the runtime: {e}"))),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("dlockctl: {message}");
            ExitCode::FAILURE
        }
    }
}

//! `dlockctl`: a small admin CLI for a dlock cluster, over the `dlock.v1.Admin` service that
//! every dlockd node serves on its client port.
//!
//! ```text
//! dlockctl [--endpoint HOST:PORT]... status [--all]
//! dlockctl [--endpoint HOST:PORT]... health
//! dlockctl [--endpoint HOST:PORT]... list [--prefix P] [--after NAME] [--limit N] [-o json]
//! dlockctl [--endpoint HOST:PORT]... sessions [-o json]
//! dlockctl create mutex|event|semaphore NAME [--initial-owner] [--manual-reset] [--signaled]
//!          [--initial-count N] [--maximum-count M] [--hold]
//! dlockctl open mutex|event|semaphore NAME [--hold]
//! dlockctl wait mutex|event|semaphore NAME [--timeout MS] [--hold]
//! dlockctl release NAME | set NAME | reset NAME | pulse NAME
//! dlockctl release-semaphore NAME [--count N]
//! dlockctl run --mutex NAME [--timeout MS] [--grace-ms MS] -- CMD ARGS...
//! dlockctl run --semaphore NAME --limit N [--timeout MS] [--grace-ms MS] -- CMD ARGS...
//! dlockctl add-learner ID PEER_ADDR
//! dlockctl add-voter ID PEER_ADDR
//! dlockctl promote ID
//! dlockctl remove ID
//! dlockctl local [--dir DIR] [--namespace NAME]
//! ```
//!
//! `health` asks each endpoint on its own for the standard `grpc.health.v1` status (no retries,
//! no leader hints: it is about that node) and exits 0 only if every one is `SERVING`, which a
//! node is while it is a member and knows a leader. It needs no shell, so a `FROM scratch`
//! container can use it as its healthcheck.
//!
//! `list` prints the cluster's named objects (type, name, state, owner session/thread, handle
//! and waiter counts, fencing token) in name order, `sessions` the open sessions (client name,
//! TTL, silence, handles, pending waits, the mutexes each owns); both read linearizably from
//! any node, as a table or, with `-o json`, as one JSON document.
//!
//! The object commands make the Win32 call of their name from a session of their own, which
//! ends with the process (see handles.rs: `--hold` keeps the handle until a signal; exit 3 is
//! `WAIT_TIMEOUT`, 4 `WAIT_ABANDONED`). `run` runs a command only while holding a mutex and
//! exits with the command's status (see run.rs for its signals and exit statuses 124-127).
//!
//! `local` needs no cluster: it prints this host's `Local\` namespace (the shared-memory
//! segment of `DLOCK_LOCAL_DIR` / `DLOCK_LOCAL_NAMESPACE`): attached processes, objects with
//! their handles, owners and waiters, and blocked waits. It also reclaims dead processes'
//! handles, as any attach does.
//!
//! The endpoints (client addresses of any members, default `DLOCK_ENDPOINTS`, else
//! `127.0.0.1:7700`) are used as the client library uses them (`dlock::Client`): a node that
//! is not the leader answers with a hint naming the leader, which is followed; calls are
//! retried across the endpoints on `UNAVAILABLE` and connection errors until `--timeout-ms`
//! has passed; any other error ends the command at once. The exit status is 0 on success, 1 on
//! a failed call, 2 on bad usage (and, for the object commands and `run`, the statuses above).

// One `unsafe` block: `run`'s `pre_exec` (see run.rs, `die_with_parent`).
#![deny(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod handles;
mod objects;
mod run;
use dlock::admin::{Member, MembershipReply, NodeStatus, RightsReply, Role};
use dlock::{Client, ClientConfig};

/// Command line of `dlockctl`.
#[derive(Debug, Parser)]
#[command(
    name = "dlockctl",
    version,
    about = "Use and administer a dlock cluster: named objects, commands under a lock, status, membership."
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
    /// CA certificates (PEM) the nodes' certificates must chain to; turns TLS on (etcdctl's
    /// `--cacert`).
    #[arg(long, env = "DLOCK_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for nodes started with `--client-cert-auth`.
    #[arg(long, env = "DLOCK_CERT", global = true)]
    cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long, env = "DLOCK_KEY", global = true)]
    key: Option<std::path::PathBuf>,
    /// Give up after this many milliseconds of retrying (leader changes, nodes down).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Output format: lines and tables for people, or JSON documents for scripts.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    output: objects::Output,
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
    /// Asks each endpoint for its gRPC health status; exits 0 only if all are SERVING.
    Health {
        /// The service to ask about (empty: the node as a whole).
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Lists the cluster's named objects in name order, with their state.
    List {
        /// Only names starting with this (`Global\` is ignored, as in names).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Start after this name (what a previous `list` printed to continue).
        #[arg(long, default_value = "")]
        after: String,
        /// Print at most this many objects.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Lists the open sessions: client name, TTL, silence, handles, waits, mutexes owned.
    Sessions,
    /// Shows what a principal may do with a name under the answering node's ACL
    /// (`--acl-file`), and the rules that grant it.
    Acl {
        /// A client certificate subject (`CN=alice`); "" for a caller without one.
        principal: String,
        /// An object name.
        name: String,
    },
    /// Creates a named object, or opens the existing one of that name (`CreateMutex`,
    /// `CreateEvent`, `CreateSemaphore`).
    Create {
        /// What to create.
        #[command(flatten)]
        args: handles::CreateArgs,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// Opens an existing named object (`OpenMutex`, `OpenEvent`, `OpenSemaphore`) and prints
    /// its state.
    Open {
        /// The object's type.
        kind: handles::Kind,
        /// Its name.
        name: String,
        /// Keep the handle until SIGINT/SIGTERM.
        #[arg(long)]
        hold: bool,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// Waits for a named object (`WaitForSingleObject`): exit 0 signaled/acquired, 3 timed
    /// out, 4 acquired an abandoned mutex. A mutex acquired is released at exit (with
    /// `--hold`: at SIGINT/SIGTERM).
    Wait {
        /// The object's type.
        kind: handles::Kind,
        /// Its name.
        name: String,
        /// Give up after this many milliseconds (default: wait forever).
        #[arg(long, value_name = "MS")]
        timeout: Option<u32>,
        /// Keep the handle, and the mutex acquired, until SIGINT/SIGTERM.
        #[arg(long)]
        hold: bool,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// `ReleaseMutex`: only the owner may release, so from its own process this reports who
    /// owns the mutex (ERROR_NOT_OWNER); stop the holding process to release it.
    Release {
        /// The mutex's name.
        name: String,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// `SetEvent`.
    Set {
        /// The event's name.
        name: String,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// `ResetEvent`.
    Reset {
        /// The event's name.
        name: String,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// `PulseEvent`.
    Pulse {
        /// The event's name.
        name: String,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// `ReleaseSemaphore`: raises the count, prints the previous one.
    ReleaseSemaphore {
        /// The semaphore's name.
        name: String,
        /// By how much.
        #[arg(long, default_value_t = 1)]
        count: i32,
        /// The session.
        #[command(flatten)]
        session: handles::SessionArgs,
    },
    /// Runs a command only while holding a named mutex (or one of N slots), forwarding
    /// signals, stopping it if the lease is in jeopardy, exiting with its status.
    Run(run::RunArgs),
    /// Makes certificates for development and tests: a CA, one per node (naming the node, for
    /// both ports) and one per client (its principal). Use your own PKI in production.
    Certs {
        /// What to make.
        #[command(subcommand)]
        action: CertsAction,
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

/// `dlockctl certs` actions.
#[derive(Debug, Subcommand)]
enum CertsAction {
    /// Writes ca.pem/ca.key, node-N.pem/.key and client-NAME.pem/.key into DIR.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Node certificates for ids 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Client certificates, comma-separated principal names (`CN=<name>`).
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
        /// More host names or addresses every node certificate carries (beyond node-N,
        /// nodeN, localhost, 127.0.0.1 and ::1).
        #[arg(long = "host", value_delimiter = ',')]
        hosts: Vec<String>,
        /// Replace certificates already in DIR.
        #[arg(long)]
        force: bool,
        /// Make the private keys readable by every user (0644), to bind-mount them into
        /// containers that run as another user. Development only.
        #[arg(long)]
        readable_keys: bool,
    },
}

/// Writes development certificates.
fn certs(action: CertsAction) -> Result<(), Failure> {
    let CertsAction::Init {
        dir,
        nodes,
        clients,
        hosts,
        force,
        readable_keys,
    } = action;
    if nodes > 100 {
        return Err(Failure(format!("--nodes {nodes}: at most 100")));
    }
    let specs: Vec<_> = (1..=nodes)
        .map(|id| dlock_tls::certs::NodeSpec::with_default_hosts(id, &hosts))
        .collect();
    let bundle = dlock_tls::certs::generate("dlock development CA", &specs, &clients)
        .map_err(|e| Failure(e.to_string()))?;
    let written = dlock_tls::certs::write(&dir, &bundle, force, readable_keys)
        .map_err(|e| Failure(e.to_string()))?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// The TLS settings of the command line, set once before any connection.
static TLS: std::sync::OnceLock<Option<dlock::ClientTls>> = std::sync::OnceLock::new();

/// The TLS every connection of this process uses (`None`: plaintext).
pub(crate) fn tls() -> Option<dlock::ClientTls> {
    TLS.get().cloned().flatten()
}

/// How long `dlockctl local` waits for the namespace lock before naming its holder.
const LOCAL_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Why a command failed, as printed before exiting.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

/// The role as the status lines print it.
fn role_label(role: Role) -> &'static str {
    match role {
        Role::Unspecified => "UNKNOWN",
        Role::Follower => "FOLLOWER",
        Role::PreCandidate => "PRE_CANDIDATE",
        Role::Candidate => "CANDIDATE",
        Role::Leader => "LEADER",
    }
}

/// A client for the configured endpoints that retries for `timeout`.
async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, Failure> {
    let mut config = ClientConfig::new(endpoints);
    config.tls = tls();
    config.token = dlock::token_from_env();
    config.request_timeout = timeout;
    // A membership change waits for its commit and for the new configuration (seconds), so an
    // attempt may use whatever is left of the budget, as dlockctl always allowed; a node that
    // accepts and never answers then uses it all (errors, not hangs, move on to the next node).
    config.attempt_timeout = timeout;
    config.client_name = "dlockctl".into();
    Client::connect_with_config(config)
        .await
        .map_err(|e| Failure(format!("bad endpoints: {e}")))
}

/// One line describing a node's own Raft state.
fn node_line(n: &NodeStatus) -> String {
    if !n.reachable {
        return format!("node {:<3} unreachable", n.node_id);
    }
    let leader = if n.leader_id == 0 {
        "none".to_owned()
    } else {
        n.leader_id.to_string()
    };
    format!(
        "node {:<3} {:<13} term {:<5} commit {:<8} applied {:<8} leader {:<4} client {:<21} reachable cluster {:016x} incarnation {:016x}",
        n.node_id,
        role_label(n.role()),
        n.term,
        n.commit,
        n.applied,
        leader,
        n.client_addr,
        n.cluster_id,
        n.incarnation
    )
}

/// `dlockctl acl`'s answer: the rights, then the rules that grant them.
fn print_rights(principal: &str, name: &str, reply: &RightsReply) {
    let who = if principal.is_empty() {
        "(no principal)"
    } else {
        principal
    };
    if !reply.enforced {
        println!(
            "node {} has no ACL file: {who} may do everything with {name:?}",
            reply.node_id
        );
        return;
    }
    let rights = if reply.rights.is_empty() {
        "none (ERROR_ACCESS_DENIED)".to_owned()
    } else {
        reply.rights.join(", ")
    };
    println!("{who} on {name:?}: {rights}");
    println!("acl file {} on node {}", reply.acl_file, reply.node_id);
    for rule in &reply.rules {
        println!("  granted by {rule}");
    }
}

/// One line describing a member.
fn member_line(m: &Member) -> String {
    let kind = if m.voter { "voter" } else { "learner" };
    let matched = if m.matched == 0 {
        "-".to_owned()
    } else {
        m.matched.to_string()
    };
    let incarnation = if m.incarnation == 0 {
        "-".to_owned()
    } else {
        format!("{:016x}", m.incarnation)
    };
    format!(
        "member {:<3} {:<7} peer {:<21} matched {matched:<8} incarnation {incarnation}",
        m.node_id, kind, m.peer_addr
    )
}

/// Prints the member list of a membership change's reply.
fn print_members(members: &[Member]) {
    println!("members:");
    for m in members {
        println!("  {}", member_line(m));
    }
}

/// `status [--all]`.
async fn status(endpoints: &[String], timeout: Duration, all: bool) -> Result<(), Failure> {
    let client = connect(endpoints, timeout).await?;
    let failed = |e: dlock::Error| Failure(format!("status: {e}"));
    let mut reply = client.admin().status(all).await.map_err(failed)?;
    // Only the leader knows the replication progress (`matched`): ask it when it is another
    // node and its client address is known.
    if all
        && let Some(own) = &reply.node
        && own.role() != Role::Leader
        && let Some(leader) = reply
            .nodes
            .iter()
            .find(|n| n.reachable && n.node_id == own.leader_id && n.role() == Role::Leader)
        && !leader.client_addr.is_empty()
        && let Ok(leader_client) = connect(
            std::slice::from_ref(&leader.client_addr),
            timeout.min(Duration::from_secs(2)),
        )
        .await
        && let Ok(from_leader) = leader_client.admin().status(all).await
    {
        reply = from_leader;
    }
    let own = reply
        .node
        .as_ref()
        .ok_or_else(|| Failure("status: reply without a node".into()))?;
    println!(
        "answered by node {} at {}",
        own.node_id,
        if own.client_addr.is_empty() {
            "?"
        } else {
            &own.client_addr
        }
    );
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

/// `health`: one `grpc.health.v1.Health/Check` per endpoint, each bounded by `timeout`.
async fn health(endpoints: &[String], timeout: Duration, service: &str) -> Result<(), Failure> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let endpoints: Vec<&str> = endpoints
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(Failure("health: no endpoints to check".into()));
    }
    let mut unhealthy = 0;
    for &endpoint in &endpoints {
        // The connector decides on TLS (--cacert); the scheme only has to parse.
        let uri = match endpoint.split_once("://") {
            Some(("https", rest)) if tls().is_some() => format!("http://{rest}"),
            Some(("https", _)) => {
                return Err(Failure(format!(
                    "health: {endpoint} asks for TLS: give --cacert (DLOCK_CACERT)"
                )));
            }
            Some(_) => endpoint.to_owned(),
            None => format!("http://{endpoint}"),
        };
        let check = async {
            let channel = tonic::transport::Endpoint::from_shared(uri)
                .map_err(|e| format!("bad endpoint: {e}"))?
                .connect_timeout(timeout)
                .connect_with_connector(dlock_tls::Connector::new(tls()))
                .await
                .map_err(|e| format!("cannot connect: {}", dlock_tls::error_chain(&e)))?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await;
            match reply {
                Ok(reply) => Ok(Some(reply.into_inner().status())),
                // The node answered: it knows no such service.
                Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
                Err(status) => Err(format!("{:?}: {}", status.code(), status.message())),
            }
        };
        let answer = match tokio::time::timeout(timeout, check).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        match answer {
            Ok(Some(ServingStatus::Serving)) => println!("{endpoint} SERVING"),
            Ok(None) => {
                unhealthy += 1;
                println!("{endpoint} SERVICE_UNKNOWN ({service:?})");
            }
            Ok(Some(other)) => {
                unhealthy += 1;
                println!("{endpoint} {}", other.as_str_name());
            }
            Err(why) => {
                unhealthy += 1;
                println!("{endpoint} UNREACHABLE ({why})");
            }
        }
    }
    match unhealthy {
        0 => Ok(()),
        n => Err(Failure(format!(
            "{n} of {} endpoints not serving",
            endpoints.len()
        ))),
    }
}

/// Runs the parsed command; returns the exit status.
async fn run(cli: Cli) -> Result<u8, Failure> {
    let timeout = Duration::from_millis(cli.timeout_ms);
    let endpoints = &cli.endpoints;
    let object = |op: handles::Op, session: handles::SessionArgs| async move {
        handles::run(endpoints, timeout, &session, cli.output, op).await
    };
    let (what, result): (String, Result<MembershipReply, dlock::admin::AdminError>) =
        match cli.command {
            Command::Local { .. } | Command::Certs { .. } => {
                unreachable!("handled before the runtime starts")
            }
            Command::Create { args, session } => {
                return object(handles::Op::Create(args), session).await;
            }
            Command::Open {
                kind,
                name,
                hold,
                session,
            } => return object(handles::Op::Open { kind, name, hold }, session).await,
            Command::Wait {
                kind,
                name,
                timeout: wait_ms,
                hold,
                session,
            } => {
                let op = handles::Op::Wait {
                    kind,
                    name,
                    timeout: wait_ms,
                    hold,
                };
                return object(op, session).await;
            }
            Command::Release { name, session } => {
                return object(handles::Op::Release { name }, session).await;
            }
            Command::Set { name, session } => {
                return object(handles::Op::Set { name }, session).await;
            }
            Command::Reset { name, session } => {
                return object(handles::Op::Reset { name }, session).await;
            }
            Command::Pulse { name, session } => {
                return object(handles::Op::Pulse { name }, session).await;
            }
            Command::ReleaseSemaphore {
                name,
                count,
                session,
            } => {
                return object(handles::Op::ReleaseSemaphore { name, count }, session).await;
            }
            Command::Run(args) => return Ok(run::run(endpoints, timeout, args).await),
            Command::Status { all } => return status(endpoints, timeout, all).await.map(|()| 0),
            Command::Health { service } => {
                return health(endpoints, timeout, &service).await.map(|()| 0);
            }
            Command::List {
                prefix,
                after,
                limit,
            } => {
                let client = connect(endpoints, timeout).await?;
                return objects::list(&client, &prefix, &after, limit, cli.output)
                    .await
                    .map(|()| 0);
            }
            Command::Sessions => {
                let client = connect(endpoints, timeout).await?;
                return objects::sessions(&client, cli.output).await.map(|()| 0);
            }
            Command::Acl { principal, name } => {
                let client = connect(endpoints, timeout).await?;
                let reply = client
                    .admin()
                    .rights(&principal, &name)
                    .await
                    .map_err(|e| Failure(format!("acl: {e}")))?;
                print_rights(&principal, &name, &reply);
                return Ok(0);
            }
            Command::AddLearner { id, peer_addr } => {
                let client = connect(endpoints, timeout).await?;
                let r = client.admin().add_learner(id, &peer_addr).await;
                (format!("added node {id} as a learner"), r)
            }
            Command::AddVoter { id, peer_addr } => {
                let client = connect(endpoints, timeout).await?;
                let r = client.admin().add_voter(id, &peer_addr).await;
                (format!("added node {id} as a voter"), r)
            }
            Command::Promote { id } => {
                let client = connect(endpoints, timeout).await?;
                let r = client.admin().promote(id).await;
                (format!("promoted node {id} to voter"), r)
            }
            Command::Remove { id } => {
                let client = connect(endpoints, timeout).await?;
                let r = client.admin().remove(id).await;
                (format!("removed node {id}"), r)
            }
        };
    match result {
        Ok(reply) => {
            println!("{what}");
            print_members(&reply.members);
            Ok(0)
        }
        Err(e) => {
            // The server's message names the problem ("node 9 is not a learner").
            let mut message = match &e.error {
                dlock::Error::InvalidArgument(why) => why.clone(),
                other => other.to_string(),
            };
            if e.maybe_applied {
                message.push_str(
                    " (an earlier attempt may have applied the change: \
                     check `dlockctl status --all`)",
                );
            }
            Err(Failure(message))
        }
    }
}

/// Prints the local namespace named by `dir` and `namespace`.
fn local(dir: std::path::PathBuf, namespace: Option<String>) -> Result<(), Failure> {
    let mut settings = dlock_local::Settings::from_env();
    settings.dir = dir;
    if let Some(ns) = namespace {
        if !dlock_local::valid_namespace(&ns) {
            return Err(Failure(format!(
                "invalid namespace {ns:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'"
            )));
        }
        settings.namespace = ns;
    }
    let path = settings.segment_path();
    if !path.exists() {
        return Err(Failure(format!(
            "no local namespace at {} (it is created by the first process that uses a Local\\ name)",
            path.display()
        )));
    }
    // An operator's look must not hang behind a process that holds the namespace lock and
    // does not run (stopped, frozen, in a debugger): it names that process instead.
    settings.lock_timeout = LOCAL_LOCK_WAIT;
    let seg = dlock_local::Segment::attach(&settings).map_err(|e| Failure(e.to_string()))?;
    let snapshot = seg
        .snapshot()
        .map_err(|e| Failure(seg.lock_error(e).to_string()))?;
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

/// Runs a command that talks to the cluster.
fn on_cluster(cli: Cli) -> Result<u8, Failure> {
    let tls = dlock::tls_from_files(
        cli.cacert.as_deref(),
        cli.cert.as_deref(),
        cli.key.as_deref(),
    )
    .map_err(|e| Failure(e.to_string()))?;
    let _ = TLS.set(tls);
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(Failure(format!("cannot start the runtime: {e}"))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Local { dir, namespace } => local(dir, namespace).map(|()| 0),
        Command::Certs { action } => certs(action).map(|()| 0),
        _ => on_cluster(cli),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure(message)) => {
            eprintln!("dlockctl: {message}");
            ExitCode::FAILURE
        }
    }
}

//! dlockd's configuration: one typed struct, every default in [`Config::default`], validated at
//! start-up with precise messages.
//!
//! # Sources
//!
//! Every setting has one name, used the same way in all three sources, highest first:
//!
//! 1. a command-line flag: `--client-addr 127.0.0.1:7700`;
//! 2. an environment variable, `DLOCKD_` and the name in upper snake case:
//!    `DLOCKD_CLIENT_ADDR=127.0.0.1:7700`;
//! 3. a TOML file named by `--config FILE` (or `DLOCKD_CONFIG`): `client-addr = "127.0.0.1:7700"`.
//!
//! Anything unset takes the default in [`Config::default`]. [`Settings`] is that layered
//! input (clap parses flags and environment into it, serde parses the file into it);
//! [`Settings::resolve`] merges and validates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Error;

/// The default address clients connect to (`DLOCK_ENDPOINTS` of the client defaults to it).
pub const DEFAULT_CLIENT_ADDR: &str = "127.0.0.1:7700";
/// The default address of the peer (Raft) transport.
pub const DEFAULT_PEER_ADDR: &str = "127.0.0.1:7701";
/// The default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "dlockd-data";

/// The default admin principal: the subject of the client certificate
/// `dlockctl certs init --clients admin` makes.
pub const DEFAULT_ADMIN_PRINCIPAL: &str = "CN=admin";

/// The largest session TTL any configuration may allow: one day, in milliseconds.
pub const SESSION_TTL_MS_LIMIT: u64 = 24 * 3600 * 1000;
/// The longest keepalive checkpoint interval: one hour, in milliseconds.
pub const CHECKPOINT_INTERVAL_MS_LIMIT: u64 = 3600 * 1000;

/// Everything a dlockd node needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's Raft id (> 0). A one-node cluster uses 1.
    pub node_id: u64,
    /// Where the node keeps its Raft log, hard state and snapshots (sled). Created if missing; a
    /// node whose directory is empty bootstraps a new one-member cluster.
    pub data_dir: PathBuf,
    /// The address the client API (gRPC `dlock.v1.Dlock` and `dlock.v1.Admin`) listens on.
    /// Port 0 picks a free port.
    pub client_addr: SocketAddr,
    /// The address the peer transport (Raft messages between nodes) listens on.
    pub peer_addr: SocketAddr,
    /// The members of a new cluster, node id to peer address (`host:port`). Used only when the
    /// data directory is empty; a node with stored state rejoins with the members it stored.
    /// Empty means a one-member cluster of this node at `peer_addr`. A list that does not name
    /// this node means "join that existing cluster": the node starts empty and waits until an
    /// admin adds it (`AddLearner` / `AddVoter`), then catches up from a snapshot.
    pub initial_cluster: BTreeMap<u64, String>,
    /// TTL granted to sessions that ask for 0, in milliseconds.
    pub session_ttl_ms_default: u64,
    /// Smallest TTL a session can get, in milliseconds; smaller requests are raised to it. Must
    /// exceed twice the longest election timeout ([`Config::election_timeout_max_ms`], 1 s at
    /// the default tick): a session must outlive a failover, and the client's conservative lease
    /// is its TTL minus that timeout.
    pub session_ttl_ms_min: u64,
    /// Largest TTL a session can get, in milliseconds; larger requests are lowered to it.
    pub session_ttl_ms_max: u64,
    /// How often the leader writes what it watched into the log, in milliseconds: the time since
    /// its previous checkpoint and, for each session heard since, how long ago (durations on
    /// its own monotonic clock, never wall-clock times). A new leader treats a session as
    /// certainly dead when its silence in that watched time exceeds twice its TTL plus this
    /// interval; other sessions get a full TTL of grace.
    pub checkpoint_interval_ms: u64,
    /// Raft tick interval in milliseconds. A follower that hears nothing from the leader for a
    /// randomized 10 to 20 ticks starts an election; the leader sends heartbeats every 2 ticks.
    /// 50 ms puts failover well under a second on a LAN.
    pub tick_ms: u64,
    /// Take a state-machine snapshot (and compact the log) every this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Largest client request the server decodes, in bytes; larger ones are refused before
    /// they are parsed (tonic answers `OUT_OF_RANGE`).
    pub request_bytes_max: usize,
    /// Most concurrent in-flight requests per client connection; further ones queue in HTTP/2
    /// flow control.
    pub requests_per_connection_max: usize,
    /// The client address (`host:port`) this node tells others about: followers name it in
    /// their leader hints (etcd's `--advertise-client-urls`). `None` means the bound client
    /// address, unless that is unspecified (`0.0.0.0`), which no client can dial: then the node
    /// advertises nothing and clients that reach a follower go round their endpoint list.
    pub advertise_client_addr: Option<String>,
    /// The peer address (`host:port`) this node records for itself when it founds a
    /// one-member cluster (etcd's `--initial-advertise-peer-urls`). `None` means the bound peer
    /// address. Ignored with `initial_cluster`, whose addresses are the advertised ones.
    pub advertise_peer_addr: Option<String>,
    /// Where the Prometheus text endpoint (`GET /metrics`) listens; `None` (the default) serves
    /// no metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// TLS on the client port: this node's certificate chain (PEM, the leaf first), which must
    /// name the host names and addresses clients dial. `None` serves plaintext (etcd's
    /// `--cert-file`).
    pub cert_file: Option<PathBuf>,
    /// The private key of [`Config::cert_file`] (etcd's `--key-file`).
    pub key_file: Option<PathBuf>,
    /// CA certificates that client certificates must chain to (etcd's `--trusted-ca-file`).
    /// Without [`Config::client_cert_auth`] a client certificate is optional but checked when
    /// presented.
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate that chains to [`Config::trusted_ca_file`] (etcd's
    /// `--client-cert-auth`).
    pub client_cert_auth: bool,
    /// Mutual TLS on the peer port: this node's peer certificate, which must name the node as
    /// the URI `dlock://node/<id>`, its host names and addresses, and both the server and
    /// client extended key usages (it is presented in both directions). Requires
    /// [`Config::peer_key_file`] and [`Config::peer_trusted_ca_file`]; peers without a
    /// certificate from that CA naming their node are refused (etcd's `--peer-cert-file`).
    pub peer_cert_file: Option<PathBuf>,
    /// The private key of [`Config::peer_cert_file`] (etcd's `--peer-key-file`).
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates that peers' certificates must chain to, in both directions (etcd's
    /// `--peer-trusted-ca-file`).
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// The principals (client certificate subjects, RFC 4514: `CN=admin`) allowed to use the
    /// admin API (`dlock.v1.Admin`: status, membership, listings) when the client port checks
    /// client certificates (`trusted_ca_file`). Only the subject is compared, so every CA in
    /// `trusted_ca_file` can make an admin. Without client certificates there are no
    /// principals: the admin API then answers loopback callers only, unless `insecure`.
    pub admin_principals: Vec<String>,
    /// What one principal may hold at once, all its sessions together ([`crate::namespace::Quota`]); `None`:
    /// only the cluster-wide limits. Every principal gets the same quota; callers without a
    /// principal share one.
    pub quota: Option<crate::namespace::Quota>,
    /// Rights by principal and name prefix ([`crate::acl`]): a TOML file of `[[rule]]`s, read
    /// at start and again on SIGHUP. `None`: every caller may do everything.
    pub acl_file: Option<PathBuf>,
    /// Development bearer tokens ([`crate::acl::Tokens`]): a TOML file of `[[token]]`s
    /// (principal, token), read at start and again on SIGHUP. A caller without a client
    /// certificate that sends one of them is that principal. `None`: no tokens.
    pub token_file: Option<PathBuf>,
    /// Serve plaintext on addresses other than loopback. Without it, a node refuses to start
    /// when the client or peer port would listen beyond loopback without TLS: anyone who
    /// reaches such a port can take every lock (or, on the peer port, replace the data).
    pub insecure: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            client_addr: DEFAULT_CLIENT_ADDR.parse().expect("valid default address"),
            peer_addr: DEFAULT_PEER_ADDR.parse().expect("valid default address"),
            initial_cluster: BTreeMap::new(),
            session_ttl_ms_default: 10_000,
            session_ttl_ms_min: 2_500,
            session_ttl_ms_max: 600_000,
            checkpoint_interval_ms: 1_000,
            tick_ms: 50,
            snapshot_interval_entries: 10_000,
            request_bytes_max: 64 * 1024,
            requests_per_connection_max: 1_024,
            advertise_client_addr: None,
            advertise_peer_addr: None,
            metrics_addr: None,
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            admin_principals: vec![DEFAULT_ADMIN_PRINCIPAL.to_owned()],
            acl_file: None,
            token_file: None,
            quota: None,
            insecure: false,
        }
    }
}

impl Config {
    /// Checks every rule a running node relies on.
    ///
    /// # Errors
    ///
    /// `Error::Config` naming the field and the rule it breaks.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.node_id == 0 {
            return fail("node-id must be greater than 0".into());
        }
        if self.data_dir.as_os_str().is_empty() {
            return fail("data-dir must not be empty".into());
        }
        if self.client_addr == self.peer_addr && self.client_addr.port() != 0 {
            return fail(format!(
                "client-addr and peer-addr must differ (both are {})",
                self.client_addr
            ));
        }
        if self.session_ttl_ms_min == 0 {
            return fail("session-ttl-ms-min must be greater than 0".into());
        }
        if self.session_ttl_ms_min > self.session_ttl_ms_max {
            return fail(format!(
                "session-ttl-ms-min ({}) must not exceed session-ttl-ms-max ({})",
                self.session_ttl_ms_min, self.session_ttl_ms_max
            ));
        }
        if !(self.session_ttl_ms_min..=self.session_ttl_ms_max)
            .contains(&self.session_ttl_ms_default)
        {
            return fail(format!(
                "session-ttl-ms-default ({}) must lie within [{}, {}]",
                self.session_ttl_ms_default, self.session_ttl_ms_min, self.session_ttl_ms_max
            ));
        }
        if self.session_ttl_ms_max > SESSION_TTL_MS_LIMIT {
            return fail(format!(
                "session-ttl-ms-max ({}) must not exceed {SESSION_TTL_MS_LIMIT} (one day)",
                self.session_ttl_ms_max
            ));
        }
        if !(1..=CHECKPOINT_INTERVAL_MS_LIMIT).contains(&self.checkpoint_interval_ms) {
            return fail(format!(
                "checkpoint-interval-ms ({}) must lie within [1, {CHECKPOINT_INTERVAL_MS_LIMIT}]",
                self.checkpoint_interval_ms
            ));
        }
        if !(1..=10_000).contains(&self.tick_ms) {
            return fail(format!(
                "tick-ms ({}) must lie within [1, 10000]",
                self.tick_ms
            ));
        }
        if self.session_ttl_ms_min <= 2 * self.election_timeout_max_ms() {
            return fail(format!(
                "session-ttl-ms-min ({}) must exceed twice the longest election timeout ({} ms at \
                 tick-ms {}): a session must outlive a failover",
                self.session_ttl_ms_min,
                self.election_timeout_max_ms(),
                self.tick_ms
            ));
        }
        if self.snapshot_interval_entries == 0 {
            return fail("snapshot-interval-entries must be greater than 0".into());
        }
        if self.request_bytes_max < 1024 {
            return fail(format!(
                "request-bytes-max ({}) must be at least 1024",
                self.request_bytes_max
            ));
        }
        if self.requests_per_connection_max == 0 {
            return fail("requests-per-connection-max must be greater than 0".into());
        }
        for (what, addr) in [
            ("advertise-client-addr", &self.advertise_client_addr),
            ("advertise-peer-addr", &self.advertise_peer_addr),
        ] {
            if let Some(addr) = addr
                && !is_host_port(addr)
            {
                return fail(format!(
                    "{what} {addr:?} must be HOST:PORT with a port above 0"
                ));
            }
        }
        if let Some(metrics) = self.metrics_addr
            && (metrics == self.client_addr || metrics == self.peer_addr)
            && metrics.port() != 0
        {
            return fail(format!(
                "metrics-addr ({metrics}) must differ from client-addr and peer-addr"
            ));
        }
        self.validate_tls()
    }

    /// The TLS rules: files given in pairs, a CA where certificates are checked, and no
    /// plaintext beyond loopback without [`Config::insecure`].
    fn validate_tls(&self) -> Result<(), Error> {
        let fail = |msg: String| Err(Error::Config(msg));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return fail("cert-file and key-file must be given together".into());
        }
        if self.cert_file.is_none() && (self.trusted_ca_file.is_some() || self.client_cert_auth) {
            return fail(
                "trusted-ca-file and client-cert-auth need TLS on the client port: give \
                 cert-file and key-file too"
                    .into(),
            );
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return fail("client-cert-auth needs trusted-ca-file to check certificates".into());
        }
        let peer = [
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ];
        if peer.iter().any(|f| f.is_some()) && !peer.iter().all(|f| f.is_some()) {
            return fail(
                "peer TLS is mutual: give peer-cert-file, peer-key-file and \
                 peer-trusted-ca-file together"
                    .into(),
            );
        }
        if let Some(quota) = &self.quota {
            for (name, value) in [
                ("quota-sessions", quota.sessions),
                ("quota-objects", quota.objects),
                ("quota-handles", quota.handles),
                ("quota-waits", quota.waits),
            ] {
                if value == 0 {
                    return fail(format!(
                        "{name} must be at least 1 (leave it out for the cluster-wide limit)"
                    ));
                }
            }
        }
        if self.admin_principals.is_empty()
            || self.admin_principals.iter().any(|p| p.trim().is_empty())
        {
            return fail(
                "admin-principals must name at least one principal, and no empty one".into(),
            );
        }
        if !self.insecure {
            if self.cert_file.is_none() && !self.client_addr.ip().is_loopback() {
                return fail(format!(
                    "refusing to serve the client API on {} without TLS: anyone who reaches it \
                     could take or release any lock. Give cert-file and key-file (and \
                     trusted-ca-file with client-cert-auth), or insecure to accept that",
                    self.client_addr
                ));
            }
            if self.peer_cert_file.is_none() && !self.peer_addr.ip().is_loopback() {
                return fail(format!(
                    "refusing to serve the peer port on {} without TLS: anyone who reaches it \
                     could replace the cluster's data. Give peer-cert-file, peer-key-file and \
                     peer-trusted-ca-file, or insecure to accept that",
                    self.peer_addr
                ));
            }
        }
        Ok(())
    }

    /// True if the admin API checks its callers' principals: the client port verifies client
    /// certificates.
    pub fn admin_needs_principal(&self) -> bool {
        self.cert_file.is_some() && self.trusted_ca_file.is_some()
    }

    /// The client port's TLS files, if it serves TLS.
    pub fn client_tls(&self) -> Option<dlock_tls::ServerFiles> {
        Some(dlock_tls::ServerFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            trusted_ca: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
        })
    }

    /// The peer port's TLS files, if it serves (mutual) TLS.
    pub fn peer_tls(&self) -> Option<dlock_tls::ServerFiles> {
        Some(dlock_tls::ServerFiles {
            cert: self.peer_cert_file.clone()?,
            key: self.peer_key_file.clone()?,
            trusted_ca: Some(self.peer_trusted_ca_file.clone()?),
            client_cert_auth: true,
        })
    }

    /// The TTL a session asking for `requested_ms` gets (0 = default), clamped to the limits.
    pub fn grant_ttl_ms(&self, requested_ms: u64) -> u64 {
        if requested_ms == 0 {
            self.session_ttl_ms_default
        } else {
            requested_ms.clamp(self.session_ttl_ms_min, self.session_ttl_ms_max)
        }
    }

    /// The longest election timeout: raft waits a randomised 10 to 20 ticks without hearing a
    /// leader before it campaigns. Clients shorten their lease by this much (see
    /// `OpenSessionReply.lease_margin_ms`).
    pub fn election_timeout_max_ms(&self) -> u64 {
        2 * dlock_cluster::Config::default().election_ticks as u64 * self.tick_ms
    }

    /// The Raft tick interval.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The members of a new cluster: `initial_cluster`, or this node alone at its advertised
    /// peer address (`peer_addr` is the address the peer port is bound to, which matters when
    /// the configured port is 0).
    pub fn members(&self, peer_addr: SocketAddr) -> BTreeMap<u64, String> {
        if self.initial_cluster.is_empty() {
            let own = self
                .advertise_peer_addr
                .clone()
                .unwrap_or_else(|| peer_addr.to_string());
            BTreeMap::from([(self.node_id, own)])
        } else {
            self.initial_cluster.clone()
        }
    }

    /// The client address to advertise, given the address the client port is bound to:
    /// [`Config::advertise_client_addr`], else the bound address unless it is unspecified.
    pub fn advertised_client_addr(&self, bound: SocketAddr) -> Option<String> {
        match &self.advertise_client_addr {
            Some(addr) => Some(addr.clone()),
            None if bound.ip().is_unspecified() => None,
            None => Some(bound.to_string()),
        }
    }
}

/// True for `host:port` with a non-empty host and a port above 0.
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// Splits `CN=a;CN=b` at every `;` that RFC 4514 did not escape (`\;` stays in the
/// principal), trimming blanks and dropping empty entries.
fn split_principals(list: &str) -> Vec<String> {
    let mut principals = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in list.chars() {
        match c {
            ';' if !escaped => principals.push(std::mem::take(&mut current)),
            c => {
                escaped = c == '\\' && !escaped;
                current.push(c);
            }
        }
    }
    principals.push(current);
    principals
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Parses `1=host:port,2=host:port,...` (the `initial-cluster` syntax).
///
/// # Errors
///
/// `Error::Config` naming the malformed member.
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<u64, String>, Error> {
    let mut members = BTreeMap::new();
    for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (id, addr) = member.split_once('=').ok_or_else(|| {
            Error::Config(format!(
                "initial-cluster member {member:?} is not ID=HOST:PORT"
            ))
        })?;
        let id: u64 = id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            Error::Config(format!(
                "initial-cluster member {member:?}: the id must be a number > 0"
            ))
        })?;
        let addr = addr.trim();
        if !is_host_port(addr) {
            return Err(Error::Config(format!(
                "initial-cluster member {member:?}: the address must be HOST:PORT"
            )));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(Error::Config(format!(
                "initial-cluster names node {id} twice"
            )));
        }
    }
    Ok(members)
}

/// The layered input of the configuration: every field optional, the same names as flags
/// (`--session-ttl-ms-min`), environment variables (`DLOCKD_SESSION_TTL_MS_MIN`) and file keys
/// (`session-ttl-ms-min = 2500`).
#[derive(Debug, Default, Clone, Deserialize, clap::Parser)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
#[command(
    name = "dlockd",
    version,
    about = "dlockd: the Win32 named-object namespace (mutexes, events, semaphores), served over \
             gRPC and replicated with Raft. With no flags it starts a one-node cluster on \
             127.0.0.1:7700 with its data in ./dlockd-data."
)]
pub struct Settings {
    /// A TOML file with any of the settings below (same names, e.g. `node-id = 2`).
    #[arg(long, env = "DLOCKD_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's Raft id [default: 1].
    #[arg(long, env = "DLOCKD_NODE_ID")]
    pub node_id: Option<u64>,
    /// Directory for the Raft log, hard state and snapshots [default: ./dlockd-data].
    #[arg(long, env = "DLOCKD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the client API [default: 127.0.0.1:7700].
    #[arg(long, env = "DLOCKD_CLIENT_ADDR")]
    pub client_addr: Option<SocketAddr>,
    /// Address of the peer (Raft) transport [default: 127.0.0.1:7701].
    #[arg(long, env = "DLOCKD_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Members of a new cluster, `ID=HOST:PEERPORT,...`; ignored once the data dir has state.
    /// A list without this node joins that existing cluster [default: this node alone].
    #[arg(long, env = "DLOCKD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// TTL in milliseconds for sessions that ask for 0 [default: 10000].
    #[arg(long, env = "DLOCKD_SESSION_TTL_MS_DEFAULT")]
    pub session_ttl_ms_default: Option<u64>,
    /// Smallest session TTL in milliseconds; must exceed twice the longest election timeout
    /// (20 ticks, 1000 ms at the default tick) [default: 2500].
    #[arg(long, env = "DLOCKD_SESSION_TTL_MS_MIN")]
    pub session_ttl_ms_min: Option<u64>,
    /// Largest session TTL in milliseconds [default: 600000].
    #[arg(long, env = "DLOCKD_SESSION_TTL_MS_MAX")]
    pub session_ttl_ms_max: Option<u64>,
    /// How often the leader checkpoints the durations it watched into the log, in milliseconds
    /// [default: 1000].
    #[arg(long, env = "DLOCKD_CHECKPOINT_INTERVAL_MS")]
    pub checkpoint_interval_ms: Option<u64>,
    /// Raft tick in milliseconds; elections start after 10 to 20 silent ticks [default: 50].
    #[arg(long, env = "DLOCKD_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// Snapshot the state machine every this many applied entries [default: 10000].
    #[arg(long, env = "DLOCKD_SNAPSHOT_INTERVAL_ENTRIES")]
    pub snapshot_interval_entries: Option<u64>,
    /// Largest client request in bytes [default: 65536].
    #[arg(long, env = "DLOCKD_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// The client address (HOST:PORT) followers name in leader hints; needed when client-addr
    /// is 0.0.0.0 [default: client-addr, or none if it is unspecified].
    #[arg(long, env = "DLOCKD_ADVERTISE_CLIENT_ADDR")]
    pub advertise_client_addr: Option<String>,
    /// The peer address (HOST:PORT) this node records for itself when it founds a one-member
    /// cluster [default: peer-addr].
    #[arg(long, env = "DLOCKD_ADVERTISE_PEER_ADDR")]
    pub advertise_peer_addr: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, env = "DLOCKD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// TLS certificate (PEM chain) of the client port [default: plaintext].
    #[arg(long, env = "DLOCKD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of cert-file.
    #[arg(long, env = "DLOCKD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long, env = "DLOCKD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates from trusted-ca-file.
    #[arg(long, env = "DLOCKD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Peer TLS certificate (PEM chain), naming this node as the URI `dlock://node/<id>`
    /// [default: plaintext].
    #[arg(long, env = "DLOCKD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of peer-cert-file.
    #[arg(long, env = "DLOCKD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that peers' certificates must chain to.
    #[arg(long, env = "DLOCKD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Principals (client certificate subjects such as CN=admin) allowed to use the admin API,
    /// separated by ';' [default: CN=admin].
    #[arg(long, env = "DLOCKD_ADMIN_PRINCIPALS")]
    pub admin_principals: Option<String>,
    /// ACL file (TOML `[[rule]]` tables: principal, prefix, rights): what each principal may do with
    /// which names; re-read on SIGHUP [default: none, everyone may do everything].
    #[arg(long, env = "DLOCKD_ACL_FILE")]
    pub acl_file: Option<PathBuf>,
    /// Development bearer tokens (TOML `[[token]]` tables: principal, token): a caller
    /// without a client certificate that sends one is that principal; re-read on SIGHUP.
    #[arg(long, env = "DLOCKD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Sessions one principal may have open at once [default: no quota, only the cluster's
    /// limit]. Setting any quota-* turns quotas on, the others defaulting to the cluster-wide
    /// limits.
    #[arg(long, env = "DLOCKD_QUOTA_SESSIONS")]
    pub quota_sessions: Option<u32>,
    /// Objects one principal's sessions may have created and still exist.
    #[arg(long, env = "DLOCKD_QUOTA_OBJECTS")]
    pub quota_objects: Option<u32>,
    /// Handles one principal may have open.
    #[arg(long, env = "DLOCKD_QUOTA_HANDLES")]
    pub quota_handles: Option<u32>,
    /// Blocked (pending) waits one principal may have.
    #[arg(long, env = "DLOCKD_QUOTA_WAITS")]
    pub quota_waits: Option<u32>,
    /// Allow plaintext client or peer ports on addresses other than loopback.
    #[arg(long, env = "DLOCKD_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
}

impl Settings {
    /// Reads a settings file.
    ///
    /// # Errors
    ///
    /// `Error::Config` if it cannot be read or is not valid TOML with known keys.
    pub fn from_file(path: &Path) -> Result<Settings, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))
    }

    /// Layers `self` (flags and environment) over the file it names (if any) over the defaults,
    /// and validates the result.
    ///
    /// # Errors
    ///
    /// `Error::Config` for an unreadable file or an invalid value.
    pub fn resolve(self) -> Result<Config, Error> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        let d = Config::default();
        macro_rules! pick {
            ($field:ident) => {
                self.$field.or(file.$field).unwrap_or(d.$field)
            };
        }
        let initial_cluster = match self.initial_cluster.or(file.initial_cluster) {
            Some(text) => parse_initial_cluster(&text)?,
            None => BTreeMap::new(),
        };
        let config = Config {
            node_id: pick!(node_id),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or(d.data_dir.clone()),
            client_addr: pick!(client_addr),
            peer_addr: pick!(peer_addr),
            initial_cluster,
            session_ttl_ms_default: pick!(session_ttl_ms_default),
            session_ttl_ms_min: pick!(session_ttl_ms_min),
            session_ttl_ms_max: pick!(session_ttl_ms_max),
            checkpoint_interval_ms: pick!(checkpoint_interval_ms),
            tick_ms: pick!(tick_ms),
            snapshot_interval_entries: pick!(snapshot_interval_entries),
            request_bytes_max: pick!(request_bytes_max),
            advertise_client_addr: self.advertise_client_addr.or(file.advertise_client_addr),
            advertise_peer_addr: self.advertise_peer_addr.or(file.advertise_peer_addr),
            metrics_addr: self.metrics_addr.or(file.metrics_addr),
            cert_file: self.cert_file.or(file.cert_file),
            key_file: self.key_file.or(file.key_file),
            trusted_ca_file: self.trusted_ca_file.or(file.trusted_ca_file),
            client_cert_auth: pick!(client_cert_auth),
            peer_cert_file: self.peer_cert_file.or(file.peer_cert_file),
            peer_key_file: self.peer_key_file.or(file.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(file.peer_trusted_ca_file),
            admin_principals: match self.admin_principals.or(file.admin_principals) {
                Some(list) => split_principals(&list),
                None => d.admin_principals.clone(),
            },
            acl_file: self.acl_file.or(file.acl_file),
            token_file: self.token_file.or(file.token_file),
            quota: {
                let sessions = self.quota_sessions.or(file.quota_sessions);
                let objects = self.quota_objects.or(file.quota_objects);
                let handles = self.quota_handles.or(file.quota_handles);
                let waits = self.quota_waits.or(file.quota_waits);
                let cap = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                (sessions.is_some() || objects.is_some() || handles.is_some() || waits.is_some())
                    .then(|| crate::namespace::Quota {
                        sessions: sessions.unwrap_or(cap(crate::namespace::SESSIONS_MAX)),
                        objects: objects.unwrap_or(cap(crate::namespace::OBJECTS_MAX)),
                        handles: handles.unwrap_or(cap(crate::namespace::HANDLES_MAX)),
                        waits: waits.unwrap_or(cap(crate::namespace::WAITS_MAX)),
                    })
            },
            insecure: pick!(insecure),
            ..d
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default()
            .validate()
            .expect("defaults must validate");
    }

    #[test]
    fn inverted_ttl_limits_are_refused_with_both_values() {
        let config = Config {
            session_ttl_ms_min: 5_000,
            session_ttl_ms_max: 1_000,
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("5000") && err.contains("1000"), "{err}");
    }

    #[test]
    fn initial_cluster_parses_and_rejects_malformed_members() {
        let members =
            parse_initial_cluster("1=127.0.0.1:7701, 2=node-2:7701,3=[::1]:7701").unwrap();
        assert_eq!(members.len(), 3);
        assert_eq!(members[&2], "node-2:7701");
        for bad in ["1", "0=a:1", "x=a:1", "1=a", "1=a:0", "1=:5", "1=a:1,1=b:2"] {
            let err = parse_initial_cluster(bad).unwrap_err().to_string();
            assert!(err.contains("initial-cluster"), "{bad}: {err}");
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dlockd.toml");
        std::fs::write(
            &path,
            "node-id = 2\ntick-ms = 50\ninitial-cluster = \"1=a:1,2=b:2\"\n",
        )
        .unwrap();
        let settings = Settings {
            config: Some(path.clone()),
            tick_ms: Some(20),
            ..Settings::default()
        };
        let config = settings.resolve().unwrap();
        assert_eq!(config.node_id, 2, "from the file");
        assert_eq!(config.tick_ms, 20, "the flag wins");
        assert_eq!(config.session_ttl_ms_default, 10_000, "the default");
        assert_eq!(config.initial_cluster.len(), 2);
        std::fs::write(&path, "node-idd = 2\n").unwrap();
        let err = Settings {
            config: Some(path),
            ..Settings::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("node-idd"), "{err}");
    }

    #[test]
    fn the_sample_config_file_is_valid_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/dlockd.sample.toml");
        let settings = Settings::from_file(&path).expect("the sample parses");
        let config = Settings {
            config: Some(path),
            ..Settings::default()
        }
        .resolve()
        .expect("the sample validates");
        let d = Config::default();
        assert_eq!(settings.node_id, Some(d.node_id));
        assert_eq!(config.client_addr, d.client_addr);
        assert_eq!(config.peer_addr, d.peer_addr);
        assert_eq!(config.tick_ms, d.tick_ms);
        assert_eq!(config.session_ttl_ms_default, d.session_ttl_ms_default);
        assert_eq!(
            config.snapshot_interval_entries,
            d.snapshot_interval_entries
        );
        assert_eq!(config.request_bytes_max, d.request_bytes_max);
    }

    #[test]
    fn admin_principals_are_semicolon_separated_subjects() {
        let config = Settings {
            admin_principals: Some("CN=admin; CN=ops,O=acme ;".into()),
            ..Settings::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.admin_principals, ["CN=admin", "CN=ops,O=acme"]);
        assert_eq!(split_principals("CN=a\\;b;CN=c"), ["CN=a\\;b", "CN=c"]);
        let err = Settings {
            admin_principals: Some(";".into()),
            ..Settings::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("at least one principal"), "{err}");
        let default = Settings::default().resolve().unwrap();
        assert_eq!(default.admin_principals, [DEFAULT_ADMIN_PRINCIPAL]);
        assert!(
            !default.admin_needs_principal(),
            "no client certificates, no principals"
        );
    }

    #[test]
    fn plaintext_beyond_loopback_is_refused_unless_insecure() {
        let mut config = Config {
            client_addr: "0.0.0.0:7700".parse().unwrap(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("refusing to serve the client API on 0.0.0.0:7700"),
            "{err}"
        );
        config.insecure = true;
        config.validate().expect("insecure accepts it");
        config.insecure = false;
        config.client_addr = "127.0.0.1:7700".parse().unwrap();
        config.peer_addr = "10.0.0.1:7701".parse().unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("peer port on 10.0.0.1:7701"), "{err}");
        config.peer_cert_file = Some("p.pem".into());
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("peer TLS is mutual"), "{err}");
    }

    #[test]
    fn ttl_requests_are_clamped() {
        let config = Config::default();
        assert_eq!(config.grant_ttl_ms(0), 10_000);
        assert_eq!(config.grant_ttl_ms(1), 2_500);
        assert_eq!(config.grant_ttl_ms(u64::MAX), 600_000);
        assert_eq!(config.grant_ttl_ms(3_000), 3_000);
    }

    #[test]
    fn the_minimum_ttl_must_outlive_a_failover() {
        let mut config = Config {
            session_ttl_ms_min: 2_000,
            ..Config::default()
        };
        assert_eq!(config.election_timeout_max_ms(), 1_000);
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("session-ttl-ms-min (2000)"), "{err}");
        assert!(err.contains("twice the longest election timeout"), "{err}");
        config.tick_ms = 10;
        assert!(config.validate().is_ok(), "200 ms elections allow 2 s");
    }
}

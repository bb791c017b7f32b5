//! What nodes tell each other about themselves (`dlock.v1.PeerInfo`), and the [`Directory`]
//! that turns a leader's node id into the client address followers put in their leader hints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock_proto::v1 as pb;
use dlock_proto::v1::peer_info_client::PeerInfoClient;
use dlock_proto::v1::peer_info_server::PeerInfo;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};

use crate::replica::lock;

/// How long one `Info` call to a peer may take.
pub const PEER_INFO_TIMEOUT: Duration = Duration::from_millis(500);

/// The Raft role as the admin API carries it.
pub fn role_to_wire(role: dlock_cluster::Role) -> pb::Role {
    match role {
        dlock_cluster::Role::Follower => pb::Role::Follower,
        dlock_cluster::Role::PreCandidate => pb::Role::PreCandidate,
        dlock_cluster::Role::Candidate => pb::Role::Candidate,
        dlock_cluster::Role::Leader => pb::Role::Leader,
    }
}

/// This node's own status, as `Info` and the admin `Status` report it; `client_addr` is the
/// advertised client address (empty if the node advertises none).
pub fn own_status(node: &dlock_cluster::Node, client_addr: &str) -> pb::NodeStatus {
    let status = node.status();
    pb::NodeStatus {
        node_id: status.id,
        role: role_to_wire(status.role).into(),
        term: status.term,
        commit: status.commit,
        applied: status.applied,
        leader_id: status.leader_id.unwrap_or(0),
        client_addr: client_addr.to_string(),
        reachable: true,
        cluster_id: status.cluster_id,
        incarnation: status.incarnation,
    }
}

/// The `dlock.v1.PeerInfo` service of one node.
pub struct PeerInfoService {
    node: dlock_cluster::Node,
    client_addr: String,
}

impl PeerInfoService {
    /// Answers for `node`, whose advertised client address is `client_addr` (empty: none).
    pub fn new(node: dlock_cluster::Node, client_addr: String) -> Self {
        PeerInfoService { node, client_addr }
    }
}

#[tonic::async_trait]
impl PeerInfo for PeerInfoService {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        Ok(Response::new(own_status(&self.node, &self.client_addr)))
    }
}

/// Asks node `id` at `peer_addr` for its status, over mutual TLS with `peer_tls` if given (and
/// then only if its certificate names node `id`); `None` if it does not answer in time.
pub async fn ask_peer(
    id: u64,
    peer_addr: &str,
    peer_tls: Option<&Arc<dlock_tls::ServerTls>>,
) -> Option<pb::NodeStatus> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{peer_addr}"))
        .ok()?
        .connect_timeout(PEER_INFO_TIMEOUT)
        .timeout(PEER_INFO_TIMEOUT);
    let connector = match peer_tls {
        Some(tls) => dlock_tls::Connector::peer(tls.clone(), id),
        None => dlock_tls::Connector::plain(),
    };
    let call = async {
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .inspect_err(|err| debug!(node_id = id, peer_addr, error = ?err, "cannot reach peer"))
            .ok()?;
        let mut client = PeerInfoClient::new(channel);
        client
            .info(pb::InfoRequest {})
            .await
            .ok()
            .map(Response::into_inner)
    };
    tokio::time::timeout(PEER_INFO_TIMEOUT * 2, call)
        .await
        .ok()
        .flatten()
}

/// Advertised client addresses of the members, learned from their `Info` answers, so a
/// follower can name the leader's client address in its `dlock-leader-hint`. An empty address
/// records a node that advertises none (it listens on `0.0.0.0` without
/// `--advertise-client-addr`): followers then send no hint for it.
pub struct Directory {
    client_addrs: Mutex<HashMap<u64, String>>,
    /// This node's peer TLS identity, for asking peers.
    peer_tls: Option<Arc<dlock_tls::ServerTls>>,
}

impl Directory {
    /// A directory that already knows this node's advertised client address (empty: none),
    /// asking peers over mutual TLS with `peer_tls` if given.
    pub fn new(
        node_id: u64,
        client_addr: String,
        peer_tls: Option<Arc<dlock_tls::ServerTls>>,
    ) -> Arc<Directory> {
        let directory = Directory {
            client_addrs: Mutex::new(HashMap::new()),
            peer_tls,
        };
        lock(&directory.client_addrs).insert(node_id, client_addr);
        Arc::new(directory)
    }

    /// Asks node `id` at `peer_addr` for its status: [`ask_peer`] with this node's peer TLS.
    pub async fn ask(&self, id: u64, peer_addr: &str) -> Option<pb::NodeStatus> {
        ask_peer(id, peer_addr, self.peer_tls.as_ref()).await
    }

    /// The advertised client address of node `id`, if it is known and the node has one.
    pub fn client_addr(&self, id: u64) -> Option<String> {
        lock(&self.client_addrs)
            .get(&id)
            .filter(|addr| !addr.is_empty())
            .cloned()
    }

    /// True once node `id` has told its advertised client address (or that it has none).
    pub fn knows(&self, id: u64) -> bool {
        lock(&self.client_addrs).contains_key(&id)
    }

    /// Learns node `id`'s advertised client address by asking it at `peer_addr`, replacing
    /// what was known (the node may have restarted with another). True if it answered.
    pub async fn learn(&self, id: u64, peer_addr: &str) -> bool {
        match self.ask(id, peer_addr).await {
            Some(status) if status.node_id == id => {
                debug!(node_id = id, client_addr = %status.client_addr, "learned client address");
                lock(&self.client_addrs).insert(id, status.client_addr);
                true
            }
            Some(status) => {
                warn!(
                    expected = id,
                    answered = status.node_id,
                    peer_addr,
                    "a peer answered with another node id"
                );
                false
            }
            None => {
                debug!(node_id = id, peer_addr, "peer did not answer Info");
                false
            }
        }
    }
}

//! The sending side: [`GrpcTransport`], its table of peer links (one queue and one
//! [`peer_task`](super::peer_task) per peer) kept equal to the membership, and the feedback
//! it gives the bound node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::peer_task::run_link;
use super::{PEER_QUEUE_MESSAGES, PeerLimits, is_snapshot_message};
use crate::{Node, Transport, WeakNode};

/// One encoded raft message waiting for its peer stream.
pub(super) struct Outbound {
    pub(super) payload: Vec<u8>,
    pub(super) snapshot: bool,
}

/// Transport feedback to the bound node, if any (best effort).
#[derive(Clone)]
pub(super) struct Feedback {
    node: Arc<RwLock<WeakNode>>,
}

impl Feedback {
    fn node(&self) -> Option<Node> {
        self.node.read().expect("node lock poisoned").upgrade()
    }

    pub(super) fn unreachable(&self, to: u64) {
        if let Some(node) = self.node() {
            node.report_unreachable(to);
        }
    }

    /// The identity fields for a message to `to` (all 0 before the transport is bound).
    pub(super) fn stamp(&self, to: u64) -> crate::node::Stamp {
        self.node().map(|node| node.stamp(to)).unwrap_or_default()
    }

    pub(super) fn snapshot(&self, to: u64, delivered: bool) {
        if let Some(node) = self.node() {
            node.report_snapshot(to, delivered);
        }
    }
}

/// A peer's queue and the task that drains it into a gRPC stream.
struct PeerLink {
    address: String,
    queue: mpsc::Sender<Outbound>,
    task: JoinHandle<()>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The transport's peers: a link per peer, and what starting a link takes. Shared by the
/// [`GrpcTransport`] and its task that follows the membership.
struct PeerLinks {
    self_id: u64,
    limits: PeerLimits,
    /// This node's peer certificate: links speak TLS with it and check that each peer's
    /// certificate names the node they meant to reach. `None`: plaintext.
    tls: Option<Arc<dlock_tls::ServerTls>>,
    runtime: tokio::runtime::Handle,
    feedback: Feedback,
    links: Mutex<HashMap<u64, PeerLink>>,
}

impl PeerLinks {
    fn set_peer(&self, id: u64, address: String) {
        if id == self.self_id {
            return;
        }
        let mut links = self.links.lock().expect("links lock poisoned");
        if links.get(&id).is_some_and(|link| link.address == address) {
            return;
        }
        tracing::info!(peer = id, %address, "peer address set");
        let (queue, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let connector = match &self.tls {
            Some(tls) => dlock_tls::Connector::peer(tls.clone(), id),
            None => dlock_tls::Connector::plain(),
        };
        let task = self.runtime.spawn(run_link(
            self.self_id,
            id,
            address.clone(),
            connector,
            rx,
            self.feedback.clone(),
            self.limits.effective_chunk_bytes(),
        ));
        // Replacing a link drops (and aborts) the old one.
        links.insert(
            id,
            PeerLink {
                address,
                queue,
                task,
            },
        );
    }

    fn remove_peer(&self, id: u64) {
        let removed = self.links.lock().expect("links lock poisoned").remove(&id);
        if let Some(link) = removed {
            tracing::info!(peer = id, address = %link.address, "peer removed");
        }
    }

    /// Makes the peers exactly `peers` (this node excluded).
    fn sync(&self, peers: &BTreeMap<u64, String>) {
        for (id, address) in peers {
            self.set_peer(*id, address.clone());
        }
        let stale: Vec<u64> = self
            .links
            .lock()
            .expect("links lock poisoned")
            .keys()
            .filter(|id| !peers.contains_key(id))
            .copied()
            .collect();
        for id in stale {
            self.remove_peer(id);
        }
    }
}

/// The sending side of the peer transport: see the [module docs](super).
///
/// Create it inside a tokio runtime (its tasks run there), hand it to [`Node::start`] (which
/// binds it), and keep no other strong expectations: dropping the last reference stops every
/// peer task.
pub struct GrpcTransport {
    shared: Arc<PeerLinks>,
    sync_task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for GrpcTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcTransport")
            .field("self_id", &self.shared.self_id)
            .field("peers", &self.peers())
            .finish()
    }
}

impl GrpcTransport {
    /// A transport for node `self_id` with the default [`PeerLimits`], with no peers and not
    /// yet bound to a node.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn new(self_id: u64) -> Arc<GrpcTransport> {
        Self::with_limits(self_id, PeerLimits::default())
    }

    /// Like [`GrpcTransport::new`], sending with `limits.chunk_bytes` (the receiving limit
    /// does not apply to a sender).
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn with_limits(self_id: u64, limits: PeerLimits) -> Arc<GrpcTransport> {
        Self::with_tls(self_id, limits, None)
    }

    /// Like [`GrpcTransport::with_limits`], speaking TLS with `tls` (this node's peer
    /// certificate, key and trusted CA, read again at every connect so that they rotate) and
    /// sending to a peer only over a connection whose certificate names that peer.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime.
    pub fn with_tls(
        self_id: u64,
        limits: PeerLimits,
        tls: Option<Arc<dlock_tls::ServerTls>>,
    ) -> Arc<GrpcTransport> {
        Arc::new(GrpcTransport {
            shared: Arc::new(PeerLinks {
                self_id,
                limits,
                tls,
                runtime: tokio::runtime::Handle::current(),
                feedback: Feedback {
                    node: Arc::new(RwLock::new(WeakNode::default())),
                },
                links: Mutex::new(HashMap::new()),
            }),
            sync_task: Mutex::new(None),
        })
    }

    /// Sets (or changes) peer `id`'s address: `HOST:PORT` or a URI (`http://HOST:PORT`). A new
    /// address replaces the peer's connection task; the same address is a no-op. Ignored for
    /// this node's own id. Once bound, the transport does this itself from the registry.
    pub fn set_peer(&self, id: u64, address: impl Into<String>) {
        self.shared.set_peer(id, address.into());
    }

    /// Forgets peer `id` and stops its task; messages to it are dropped from then on.
    pub fn remove_peer(&self, id: u64) {
        self.shared.remove_peer(id);
    }

    /// The peers this transport currently sends to, with their addresses.
    pub fn peers(&self) -> BTreeMap<u64, String> {
        self.shared
            .links
            .lock()
            .expect("links lock poisoned")
            .iter()
            .map(|(id, link)| (*id, link.address.clone()))
            .collect()
    }
}

impl Drop for GrpcTransport {
    fn drop(&mut self) {
        if let Some(task) = self.sync_task.lock().expect("sync lock poisoned").take() {
            task.abort();
        }
        // The links (and their tasks) go with `shared` once the sync task has let go of it.
        self.shared
            .links
            .lock()
            .expect("links lock poisoned")
            .clear();
    }
}

impl Transport for GrpcTransport {
    fn send(&self, to: u64, message: Vec<u8>) {
        let snapshot = is_snapshot_message(&message);
        let bytes = message.len();
        let result = {
            let links = self.shared.links.lock().expect("links lock poisoned");
            match links.get(&to) {
                Some(link) => link
                    .queue
                    .try_send(Outbound {
                        payload: message,
                        snapshot,
                    })
                    .map_err(|err| match err {
                        mpsc::error::TrySendError::Full(_) => "peer queue full",
                        mpsc::error::TrySendError::Closed(_) => "peer task gone",
                    }),
                None => Err("no address for peer"),
            }
        };
        match result {
            Ok(()) => tracing::trace!(to, bytes, snapshot, "raft message queued"),
            Err(reason) => {
                tracing::debug!(to, bytes, snapshot, reason, "raft message dropped");
                if snapshot {
                    self.shared.feedback.snapshot(to, false);
                }
                self.shared.feedback.unreachable(to);
            }
        }
    }

    /// Stores a weak handle to `node` for feedback and starts following its membership (the
    /// peers become exactly the registry's members other than this node). Binding again (a
    /// restarted node) replaces the previous binding.
    fn bind(&self, node: &Node) {
        *self
            .shared
            .feedback
            .node
            .write()
            .expect("node lock poisoned") = node.downgrade();
        let mut membership = node.membership();
        let peers = membership.borrow_and_update().peers.clone();
        self.shared.sync(&peers);
        let shared = self.shared.clone();
        let task = self.shared.runtime.spawn(async move {
            // Ends when the node stops (the raft thread drops the sender).
            while membership.changed().await.is_ok() {
                let peers = membership.borrow_and_update().peers.clone();
                shared.sync(&peers);
            }
        });
        if let Some(old) = self
            .sync_task
            .lock()
            .expect("sync lock poisoned")
            .replace(task)
        {
            old.abort();
        }
    }
}

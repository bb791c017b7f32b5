//! `dlock.v1.Admin`: run-time membership changes (Raft ConfChangeV2, one at a time, answered
//! once applied) and status, on every node's client port.

use std::sync::Arc;

use dlock_proto::v1 as pb;
use dlock_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use super::convert::query_reply;
use super::not_leader_hint;
use super::peer_info::{Directory, own_status};
use crate::error::Error;
use crate::replica::{Replica, lock};

/// Objects or sessions per `ListObjects` / `ListSessions` page when the request says 0.
pub const LIST_PAGE_DEFAULT: usize = 100;
/// The largest page a `ListObjects` / `ListSessions` request may ask for.
pub const LIST_PAGE_MAX: usize = 1000;

/// The `dlock.v1.Admin` service of one node.
pub struct AdminService {
    node: dlock_cluster::Node,
    replica: Arc<Replica>,
    client_addr: String,
    directory: Arc<Directory>,
    policy: Arc<crate::acl::Policy>,
}

impl AdminService {
    /// The admin service of `node` and its `replica`, whose advertised client address is
    /// `client_addr` (empty: none).
    pub fn new(
        node: dlock_cluster::Node,
        replica: Arc<Replica>,
        client_addr: String,
        directory: Arc<Directory>,
        policy: Arc<crate::acl::Policy>,
    ) -> Self {
        AdminService {
            node,
            replica,
            client_addr,
            directory,
            policy,
        }
    }

    /// The page size a list request asks for.
    fn page_size(requested: u32) -> Result<usize, Status> {
        match requested as usize {
            0 => Ok(LIST_PAGE_DEFAULT),
            n if n <= LIST_PAGE_MAX => Ok(n),
            n => Err(Status::invalid_argument(format!(
                "page_size {n} is above {LIST_PAGE_MAX}"
            ))),
        }
    }

    fn fail(&self, err: dlock_cluster::Error) -> Status {
        not_leader_hint(&self.directory, Error::from(err))
    }

    /// Every member, from the applied configuration, with the leader's replication progress.
    fn members(&self) -> Vec<pb::Member> {
        let membership = self.node.membership().borrow().clone();
        let status = self.node.status().members;
        let matched: std::collections::HashMap<u64, u64> = status
            .iter()
            .filter_map(|m| m.matched.map(|matched| (m.id, matched)))
            .collect();
        let incarnations: std::collections::HashMap<u64, u64> = status
            .iter()
            .filter_map(|m| m.incarnation.map(|incarnation| (m.id, incarnation)))
            .collect();
        let voters = membership.voters.iter().map(|id| (*id, true));
        let learners = membership.learners.iter().map(|id| (*id, false));
        let mut members: Vec<pb::Member> = voters
            .chain(learners)
            .map(|(id, voter)| pb::Member {
                node_id: id,
                peer_addr: membership.peers.get(&id).cloned().unwrap_or_default(),
                voter,
                matched: matched.get(&id).copied().unwrap_or(0),
                incarnation: incarnations.get(&id).copied().unwrap_or(0),
            })
            .collect();
        members.sort_by_key(|m| m.node_id);
        members
    }

    /// Asks the node about to be added who it is: a node of another cluster is refused, and
    /// the incarnation of its data directory goes into the conf change (0 if it does not
    /// answer: the leader then records the incarnation of its first message).
    async fn identify(&self, id: u64, peer_addr: &str) -> Result<u64, Status> {
        let Some(status) = self.directory.ask(id, peer_addr).await else {
            warn!(
                node_id = id,
                peer_addr,
                "the node to add does not answer at its peer address; adding it anyway, its \
                 incarnation will be recorded from its first message"
            );
            return Ok(0);
        };
        let ours = self.node.status().cluster_id;
        if status.node_id != id {
            return Err(Status::invalid_argument(format!(
                "{peer_addr} is node {}, not node {id}",
                status.node_id
            )));
        }
        if status.cluster_id != 0 && ours != 0 && status.cluster_id != ours {
            return Err(Status::invalid_argument(format!(
                "node {id} at {peer_addr} belongs to cluster {:016x}, this is cluster {ours:016x}: \
                 a node joins only with an empty data directory (or one of this cluster)",
                status.cluster_id
            )));
        }
        Ok(status.incarnation)
    }

    /// The reply to a change applied at `index`: the configuration as of that index (the raft
    /// thread answers the change before it publishes the new configuration, so wait for it).
    async fn changed(&self, index: u64, what: &str, node_id: u64) -> Response<pb::MembershipReply> {
        info!(index, node_id, change = what, "membership changed");
        let mut membership = self.node.membership();
        let _ = tokio::time::timeout(
            MEMBERSHIP_PUBLISH_WAIT,
            membership.wait_for(|m| m.index >= index),
        )
        .await;
        Response::new(pb::MembershipReply {
            members: self.members(),
        })
    }
}

/// How long a membership reply waits for the applied configuration to be published.
const MEMBERSHIP_PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn check_new_member(req: &pb::AddMemberRequest) -> Result<(), Status> {
    if req.node_id == 0 {
        return Err(Status::invalid_argument("node_id must be greater than 0"));
    }
    let ok = req
        .peer_addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(Status::invalid_argument(format!(
            "peer_addr {:?} is not HOST:PORT",
            req.peer_addr
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl Admin for AdminService {
    #[instrument(skip_all, fields(node_id = request.get_ref().node_id))]
    async fn add_voter(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = request.into_inner();
        check_new_member(&req)?;
        let incarnation = self.identify(req.node_id, &req.peer_addr).await?;
        let index = self
            .node
            .add_member(
                req.node_id,
                req.peer_addr,
                incarnation,
                dlock_cluster::MemberKind::Voter,
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(self.changed(index, "add voter", req.node_id).await)
    }

    #[instrument(skip_all, fields(node_id = request.get_ref().node_id))]
    async fn add_learner(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = request.into_inner();
        check_new_member(&req)?;
        let incarnation = self.identify(req.node_id, &req.peer_addr).await?;
        let index = self
            .node
            .add_member(
                req.node_id,
                req.peer_addr,
                incarnation,
                dlock_cluster::MemberKind::Learner,
            )
            .await
            .map_err(|e| self.fail(e))?;
        Ok(self.changed(index, "add learner", req.node_id).await)
    }

    #[instrument(skip_all, fields(node_id = request.get_ref().node_id))]
    async fn promote_learner(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let id = request.into_inner().node_id;
        let index = self
            .node
            .promote_learner(id)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(self.changed(index, "promote learner", id).await)
    }

    /// Removing the leader itself first hands leadership to another voter and answers
    /// UNAVAILABLE with the new leader's hint; the caller repeats the call there.
    #[instrument(skip_all, fields(node_id = request.get_ref().node_id))]
    async fn remove_node(
        &self,
        request: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let id = request.into_inner().node_id;
        let index = self.node.remove_node(id).await.map_err(|e| self.fail(e))?;
        Ok(self.changed(index, "remove node", id).await)
    }

    async fn list_objects(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsReply>, Status> {
        let req = request.into_inner();
        let limit = Self::page_size(req.page_size)?;
        // `Global\jobs` and `jobs` are one name; the namespace keys it without the prefix.
        let prefix = req
            .prefix
            .strip_prefix(dlock_proto::vocab::names::GLOBAL_PREFIX)
            .unwrap_or(&req.prefix);
        let token = req
            .page_token
            .strip_prefix(dlock_proto::vocab::names::GLOBAL_PREFIX)
            .unwrap_or(&req.page_token);
        let after = (!token.is_empty()).then_some(token);
        self.node.read_index().await.map_err(|e| self.fail(e))?;
        let (objects, more) = lock(&self.replica.ns).list_objects(prefix, after, limit);
        let next_page_token = match objects.last() {
            Some(last) if more => last.name.clone(),
            _ => String::new(),
        };
        let objects = objects
            .into_iter()
            .map(|o| pb::ObjectSummary {
                name: o.name,
                state: Some(query_reply(Ok(o.state))),
                handles: o.handles as u64,
                waiters: o.waiters as u64,
            })
            .collect();
        Ok(Response::new(pb::ListObjectsReply {
            objects,
            next_page_token,
        }))
    }

    async fn rights(
        &self,
        request: Request<pb::RightsRequest>,
    ) -> Result<Response<pb::RightsReply>, Status> {
        let req = request.into_inner();
        let key = dlock_proto::vocab::names::name_key(&req.name).map_err(|code| {
            Status::invalid_argument(format!(
                "{:?} is not a valid object name ({code:?})",
                req.name
            ))
        })?;
        let acl = self.policy.get();
        let principal = (!req.principal.is_empty()).then_some(req.principal.as_str());
        let (allowed, rules) = acl.check(principal, key);
        Ok(Response::new(pb::RightsReply {
            enforced: acl.is_enforced(),
            rights: crate::acl::rights_names(&allowed)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            rules: rules.iter().map(|rule| rule.describe()).collect(),
            acl_file: acl
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            node_id: self.node.id(),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsReply>, Status> {
        let req = request.into_inner();
        let limit = Self::page_size(req.page_size)?;
        self.node.read_index().await.map_err(|e| self.fail(e))?;
        let (sessions, more) = lock(&self.replica.ns).list_sessions(req.page_token, limit);
        let next_page_token = match sessions.last() {
            Some(last) if more => last.info.id,
            _ => 0,
        };
        let sessions = sessions
            .into_iter()
            .map(|s| pb::SessionSummary {
                session_id: s.info.id,
                client_name: s.info.client_name,
                ttl_ms: s.info.ttl_ms,
                silence_ms: s.info.silence_ms,
                handles: s.info.handles as u64,
                pending_waits: s.info.pending_waits as u64,
                owned_mutexes: s.owned_mutexes,
                owned_count: s.owned_count as u64,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsReply {
            sessions,
            next_page_token,
        }))
    }

    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let all = request.into_inner().all;
        let node = own_status(&self.node, &self.client_addr);
        let members = self.members();
        let mut nodes = Vec::new();
        if all {
            let asks = members.iter().map(|m| {
                let own = node.clone();
                let directory = &self.directory;
                async move {
                    if m.node_id == own.node_id {
                        return own;
                    }
                    directory
                        .ask(m.node_id, &m.peer_addr)
                        .await
                        .unwrap_or(pb::NodeStatus {
                            node_id: m.node_id,
                            role: pb::Role::Unspecified.into(),
                            reachable: false,
                            ..pb::NodeStatus::default()
                        })
                }
            });
            nodes = futures::future::join_all(asks).await;
        }
        Ok(Response::new(pb::ClusterStatusReply {
            node: Some(node),
            members,
            nodes,
        }))
    }
}

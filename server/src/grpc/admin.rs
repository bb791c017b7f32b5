//! `dlock.v1.Admin`: run-time membership changes (Raft ConfChangeV2, one at a time, answered
//! once applied) and status, on every node's client port.

use std::net::SocketAddr;
use std::sync::Arc;

use dlock_proto::v1 as pb;
use dlock_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::not_leader_hint;
use super::peer_info::{Directory, ask_peer, own_status};
use crate::error::Error;

/// The `dlock.v1.Admin` service of one node.
pub struct AdminService {
    node: dlock_cluster::Node,
    client_addr: SocketAddr,
    directory: Arc<Directory>,
}

impl AdminService {
    /// The admin service of `node`, whose client API listens on `client_addr`.
    pub fn new(
        node: dlock_cluster::Node,
        client_addr: SocketAddr,
        directory: Arc<Directory>,
    ) -> Self {
        AdminService {
            node,
            client_addr,
            directory,
        }
    }

    fn fail(&self, err: dlock_cluster::Error) -> Status {
        not_leader_hint(&self.directory, Error::from(err))
    }

    fn members(&self) -> Vec<pb::Member> {
        self.node
            .status()
            .members
            .into_iter()
            .map(|m| pb::Member {
                node_id: m.id,
                peer_addr: m.address.unwrap_or_default(),
                voter: m.kind == dlock_cluster::MemberKind::Voter,
                matched: m.matched.unwrap_or(0),
            })
            .collect()
    }

    fn changed(&self, index: u64, what: &str, node_id: u64) -> Response<pb::MembershipReply> {
        info!(index, node_id, change = what, "membership changed");
        Response::new(pb::MembershipReply {
            members: self.members(),
        })
    }
}

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
        let index = self
            .node
            .add_voter(req.node_id, req.peer_addr)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(self.changed(index, "add voter", req.node_id))
    }

    #[instrument(skip_all, fields(node_id = request.get_ref().node_id))]
    async fn add_learner(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let req = request.into_inner();
        check_new_member(&req)?;
        let index = self
            .node
            .add_learner(req.node_id, req.peer_addr)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(self.changed(index, "add learner", req.node_id))
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
        Ok(self.changed(index, "promote learner", id))
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
        Ok(self.changed(index, "remove node", id))
    }

    async fn status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let all = request.into_inner().all;
        let node = own_status(&self.node, self.client_addr);
        let members = self.members();
        let mut nodes = Vec::new();
        if all {
            let asks = members.iter().map(|m| {
                let own = node.clone();
                async move {
                    if m.node_id == own.node_id {
                        return own;
                    }
                    ask_peer(&m.peer_addr).await.unwrap_or(pb::NodeStatus {
                        node_id: m.node_id,
                        role: "UNKNOWN".into(),
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

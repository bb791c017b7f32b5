//! Cluster administration: status and membership, over the `dlock.v1.Admin` service that every
//! node serves on its client port.
//!
//! The calls go through the same connection, retries, node switching and leader hints as every
//! other call of a [`Client`]: a follower asked to change the membership answers `UNAVAILABLE`
//! with a hint naming the leader, and the call follows it. A change retried after an attempt
//! whose outcome is unknown (a timeout, a broken connection) may find it applied already: the
//! server then refuses it as invalid (adding a member that exists), which
//! [`AdminError::maybe_applied`] reports.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dlock::Error> {
//! let client = dlock::Client::connect(["127.0.0.1:7711"]).await?;
//! let status = client.admin().status(true).await?;
//! for node in &status.nodes {
//!     println!("node {} is {:?}", node.node_id, node.role());
//! }
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU32, Ordering};

use dlock_proto::v1::admin_client::AdminClient;
pub use dlock_proto::v1::{
    ClusterStatusReply, ListObjectsReply, ListSessionsReply, Member, MembershipReply, NodeStatus,
    ObjectSummary, QueryReply, RightsReply, Role, SessionSummary,
};

use crate::client::{Disposition, classify};
use crate::{Client, Error};

/// A failed admin call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct AdminError {
    /// What went wrong.
    pub error: Error,
    /// True if an earlier attempt of this call may have been applied before the one that
    /// failed (the call was retried after an attempt with an unknown outcome). Check the
    /// membership before repeating the change.
    pub maybe_applied: bool,
}

/// The admin calls of a [`Client`] (see the module docs). Made by [`Client::admin`].
#[derive(Debug, Clone, Copy)]
pub struct Admin<'a> {
    client: &'a Client,
}

impl Client {
    /// The admin calls (status and membership) through this client's connections.
    pub fn admin(&self) -> Admin<'_> {
        Admin { client: self }
    }
}

impl Admin<'_> {
    /// The answering node's Raft state and the members it knows; with `all`, every member's own
    /// state (asked by the answering node; unreachable members have [`Role::Unspecified`]).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when no node answered within the request timeout.
    pub async fn status(&self, all: bool) -> Result<ClusterStatusReply, Error> {
        let request = dlock_proto::v1::ClusterStatusRequest { all };
        let policy = self.client.unary_policy("Status", None);
        self.client
            .call_on(policy, |channel| async move {
                AdminClient::new(channel).status(request).await
            })
            .await
    }

    /// One page of the cluster's named objects whose names start with `prefix`, after
    /// `page_token` (empty: from the start), at most `page_size` (0: 100; at most 1000). Read
    /// on any node, linearizably. The reply's `next_page_token` is empty on the last page.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a page size above 1000; [`Error::Unavailable`] when no
    /// node answered within the request timeout.
    pub async fn list_objects(
        &self,
        prefix: &str,
        page_token: &str,
        page_size: u32,
    ) -> Result<ListObjectsReply, Error> {
        let request = dlock_proto::v1::ListObjectsRequest {
            prefix: prefix.to_owned(),
            page_token: page_token.to_owned(),
            page_size,
        };
        let policy = self.client.unary_policy("ListObjects", None);
        self.client
            .call_on(policy, |channel| {
                let request = request.clone();
                async move { AdminClient::new(channel).list_objects(request).await }
            })
            .await
    }

    /// One page of the open sessions with an id above `page_token` (0: from the start), at
    /// most `page_size` (0: 100; at most 1000). Read on any node, linearizably. The reply's
    /// `next_page_token` is 0 on the last page.
    ///
    /// # Errors
    ///
    /// As [`Admin::list_objects`].
    pub async fn list_sessions(
        &self,
        page_token: u64,
        page_size: u32,
    ) -> Result<ListSessionsReply, Error> {
        let request = dlock_proto::v1::ListSessionsRequest {
            page_token,
            page_size,
        };
        let policy = self.client.unary_policy("ListSessions", None);
        self.client
            .call_on(policy, |channel| async move {
                AdminClient::new(channel).list_sessions(request).await
            })
            .await
    }

    /// What `principal` (a certificate subject such as `CN=alice`; empty: a caller without
    /// one) may do with the object `name` under the answering node's ACL, and the rules that
    /// grant it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an invalid name; [`Error::Unavailable`] when no node
    /// answered within the request timeout.
    pub async fn rights(&self, principal: &str, name: &str) -> Result<RightsReply, Error> {
        let request = dlock_proto::v1::RightsRequest {
            principal: principal.to_owned(),
            name: name.to_owned(),
        };
        let policy = self.client.unary_policy("Rights", None);
        self.client
            .call_on(policy, |channel| {
                let request = request.clone();
                async move { AdminClient::new(channel).rights(request).await }
            })
            .await
    }

    /// Adds a non-voting member that catches up (from a snapshot) before it is promoted.
    ///
    /// # Errors
    ///
    /// [`AdminError`]: `InvalidArgument` for an id that is 0 or a member already, or a bad
    /// address; `Unavailable` when no leader answered within the request timeout.
    pub async fn add_learner(
        &self,
        id: u64,
        peer_addr: &str,
    ) -> Result<MembershipReply, AdminError> {
        let request = dlock_proto::v1::AddMemberRequest {
            node_id: id,
            peer_addr: peer_addr.to_owned(),
        };
        self.change("AddLearner", move |mut c| {
            let request = request.clone();
            async move { c.add_learner(request).await }
        })
        .await
    }

    /// Adds a voting member (prefer [`Admin::add_learner`] and [`Admin::promote`] for a node
    /// that must catch up first).
    ///
    /// # Errors
    ///
    /// As [`Admin::add_learner`].
    pub async fn add_voter(&self, id: u64, peer_addr: &str) -> Result<MembershipReply, AdminError> {
        let request = dlock_proto::v1::AddMemberRequest {
            node_id: id,
            peer_addr: peer_addr.to_owned(),
        };
        self.change("AddVoter", move |mut c| {
            let request = request.clone();
            async move { c.add_voter(request).await }
        })
        .await
    }

    /// Makes a learner a voter.
    ///
    /// # Errors
    ///
    /// As [`Admin::add_learner`] (`InvalidArgument` when `id` is not a learner).
    pub async fn promote(&self, id: u64) -> Result<MembershipReply, AdminError> {
        let request = dlock_proto::v1::NodeRequest { node_id: id };
        self.change("PromoteLearner", move |mut c| async move {
            c.promote_learner(request).await
        })
        .await
    }

    /// Removes a member (voter or learner); removing the leader hands leadership over first.
    ///
    /// # Errors
    ///
    /// As [`Admin::add_learner`] (`InvalidArgument` when `id` is not a member).
    pub async fn remove(&self, id: u64) -> Result<MembershipReply, AdminError> {
        let request = dlock_proto::v1::NodeRequest { node_id: id };
        self.change("RemoveNode", move |mut c| async move {
            c.remove_node(request).await
        })
        .await
    }

    /// Runs one membership change, noting whether an attempt before the last one may have been
    /// applied: one that timed out, or failed in a way the call retries other than a node's
    /// refusal as not the leader ([`dlock_proto::NOT_LEADER_METADATA`]). A connection refused
    /// counts too (the client cannot tell it from one lost mid-call), so `maybe_applied` can be
    /// a false alarm, never a miss.
    async fn change<F, Fut>(
        &self,
        what: &'static str,
        mut f: F,
    ) -> Result<MembershipReply, AdminError>
    where
        F: FnMut(AdminClient<crate::client::Rpc>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<MembershipReply>, tonic::Status>>,
    {
        // Attempts so far whose outcome is unknown; the last attempt's own outcome is the
        // call's result, so it is taken back out when it ends with an answer.
        let unknown = AtomicU32::new(0);
        let policy = self.client.unary_policy(what, None);
        let result = self
            .client
            .call_on(policy, |channel| {
                // Counted as unknown until it answers: a timeout drops the future unfinished.
                unknown.fetch_add(1, Ordering::Relaxed);
                let attempt = f(AdminClient::new(channel));
                let unknown = &unknown;
                async move {
                    let result = attempt.await;
                    // Known outcomes: a reply, a refusal the call does not retry (the
                    // server decided), or a node's refusal as not the leader (never applied).
                    // Anything else the call retries (a lost connection, an internal error
                    // after a proposal) may have been applied.
                    let answered = match &result {
                        Ok(_) => true,
                        Err(status) => {
                            classify(status.code()) != Disposition::NextNode
                                || status
                                    .metadata()
                                    .contains_key(dlock_proto::NOT_LEADER_METADATA)
                        }
                    };
                    if answered {
                        unknown.fetch_sub(1, Ordering::Relaxed);
                    }
                    result
                }
            })
            .await;
        result.map_err(|error| AdminError {
            maybe_applied: unknown.load(Ordering::Relaxed) > 0,
            error,
        })
    }
}

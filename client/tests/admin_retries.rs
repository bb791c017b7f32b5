//! `dlock::admin` against a scripted Admin service: which failed attempts leave a membership
//! change's outcome unknown (`AdminError::maybe_applied`). Found by review: an attempt that
//! failed with `INTERNAL` (a node whose storage failed after proposing) is retried like
//! `UNAVAILABLE`, so it too may have been applied.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dlock::{Client, ClientConfig, Error};
use dlock_proto::v1::admin_server::{Admin, AdminServer};
use dlock_proto::v1::*;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Answers every membership call with the next scripted status (then `InvalidArgument`).
#[derive(Clone, Default)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Status>>>,
}

impl Scripted {
    fn next(&self) -> Result<Response<MembershipReply>, Status> {
        let status = self.script.lock().unwrap().pop_front();
        Err(status.unwrap_or_else(|| Status::invalid_argument("node 4 is already a member")))
    }
}

#[tonic::async_trait]
impl Admin for Scripted {
    async fn add_voter(
        &self,
        _: Request<AddMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.next()
    }
    async fn add_learner(
        &self,
        _: Request<AddMemberRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.next()
    }
    async fn promote_learner(
        &self,
        _: Request<NodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.next()
    }
    async fn remove_node(
        &self,
        _: Request<NodeRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        self.next()
    }
    async fn status(
        &self,
        _: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusReply>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
    async fn list_objects(
        &self,
        _: Request<dlock_proto::v1::ListObjectsRequest>,
    ) -> Result<Response<dlock_proto::v1::ListObjectsReply>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
    async fn list_sessions(
        &self,
        _: Request<dlock_proto::v1::ListSessionsRequest>,
    ) -> Result<Response<dlock_proto::v1::ListSessionsReply>, Status> {
        Err(Status::unimplemented("not scripted"))
    }

    async fn rights(
        &self,
        _: Request<dlock_proto::v1::RightsRequest>,
    ) -> Result<Response<dlock_proto::v1::RightsReply>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

/// Runs `add_learner` against a node whose attempts fail with `first`, then refuse.
async fn maybe_applied_after(first: Status) -> bool {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Scripted::default();
    service.script.lock().unwrap().push_back(first);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut config = ClientConfig::new([addr.to_string()]);
    config.request_timeout = Duration::from_secs(5);
    let client = Client::connect_with_config(config).await.unwrap();
    let err = client
        .admin()
        .add_learner(4, "127.0.0.1:7724")
        .await
        .expect_err("the change is refused in the end");
    assert!(
        matches!(err.error, Error::InvalidArgument(ref why) if why.contains("already a member")),
        "{err:?}"
    );
    err.maybe_applied
}

#[tokio::test]
async fn an_internal_error_leaves_the_outcome_unknown() {
    assert!(maybe_applied_after(Status::internal("storage failed")).await);
}

#[tokio::test]
async fn an_unavailable_without_the_not_leader_mark_leaves_the_outcome_unknown() {
    assert!(maybe_applied_after(Status::unavailable("stopping")).await);
}

#[tokio::test]
async fn a_refusal_as_not_the_leader_is_known_not_applied() {
    let mut status = Status::unavailable("not the leader (leader hint: None)");
    status.metadata_mut().insert(
        dlock_proto::NOT_LEADER_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    assert!(!maybe_applied_after(status).await);
}

#[tokio::test]
async fn a_first_refusal_is_reported_as_it_is() {
    let status = Status::invalid_argument("node 4 is already a member");
    assert!(!maybe_applied_after(status).await);
}

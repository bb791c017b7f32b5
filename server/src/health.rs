//! The standard gRPC health service (`grpc.health.v1.Health`) on the client port, for load
//! balancers, orchestrators and `dlockctl health`.
//!
//! A node reports `SERVING` (for the empty service name and for `dlock.v1.Dlock`) only while it
//! is a member of the cluster (a voter or a learner) and knows a leader: then every request it
//! receives is served, by itself or by the leader its hint names. A node that has not joined
//! yet, was removed, or sits in a minority partition without a leader reports `NOT_SERVING`, and
//! so does a node from the moment it starts shutting down (before it hands leadership over and
//! closes its port) and one that has just started and not yet seen a leader.

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::info;

/// The service names the health service answers for, besides the empty name (the whole node).
const SERVICES: &[&str] = &["", "dlock.v1.Dlock"];

/// True if node `id` should report `SERVING`; marks both values seen.
fn serving(
    id: u64,
    leadership: &mut watch::Receiver<dlock_cluster::Leadership>,
    membership: &mut watch::Receiver<dlock_cluster::Membership>,
) -> bool {
    let known_leader = leadership.borrow_and_update().leader_id.is_some();
    let membership = membership.borrow_and_update();
    let member = membership.voters.contains(&id) || membership.learners.contains(&id);
    known_leader && member
}

/// Reports `status` for every service name the node answers for.
pub async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(*service, status).await;
    }
}

/// Keeps `reporter` in step with the node's leadership and membership until `draining` turns
/// true (the node is stopping), then reports `NOT_SERVING`.
pub async fn health_task(
    node: dlock_cluster::Node,
    reporter: HealthReporter,
    mut draining: watch::Receiver<bool>,
) {
    let mut leadership = node.leadership();
    let mut membership = node.membership();
    let mut last = None;
    loop {
        if *draining.borrow() {
            break;
        }
        let now = serving(node.id(), &mut leadership, &mut membership);
        if last != Some(now) {
            info!(serving = now, "health status changed");
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            report(&reporter, status).await;
            last = Some(now);
        }
        tokio::select! {
            changed = leadership.changed() => if changed.is_err() { break },
            changed = membership.changed() => if changed.is_err() { break },
            _ = draining.wait_for(|s| *s) => break,
        }
    }
    report(&reporter, ServingStatus::NotServing).await;
}

//! Three-node propose latency over the real gRPC peer transport on loopback, all three nodes in
//! this process: 1000 sequential proposals on the leader (each waits until a majority has
//! persisted it and the leader applied it), then 10,000 from 64 concurrent tasks.
//!
//! Run: `cargo run -p dlock-cluster --release --example replicated_latency`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use dlock_cluster::transport::{GrpcTransport, RaftPeerService};
use dlock_cluster::{Config, Node};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

mod common;

use common::{Counter, percentile};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut listeners = Vec::new();
    let mut cluster = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        cluster.insert(id, listener.local_addr().expect("addr").to_string());
        listeners.push((id, listener));
    }
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let config = Config {
            node_id: id,
            data_dir: temp.path().join(format!("n{id}")),
            initial_cluster: cluster.clone(),
            tick_interval: Duration::from_millis(50),
            ..Config::default()
        };
        let node =
            Node::start(config, Box::new(Counter(0)), GrpcTransport::new(id)).expect("start");
        let service = RaftPeerService::new(node.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
        nodes.push(node);
    }
    let leader = loop {
        if let Some(node) = nodes.iter().find(|n| n.leadership().borrow().is_leader) {
            break node.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let command = vec![7u8; 100];
    for _ in 0..200 {
        leader.propose(command.clone()).await.expect("warm-up");
    }
    let mut samples = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        leader.propose(command.clone()).await.expect("propose");
        samples.push(start.elapsed());
    }
    samples.sort_unstable();
    println!(
        "sequential (3 nodes): p50 {:?}, p90 {:?}, p99 {:?}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99)
    );
    let start = Instant::now();
    let before = leader.status();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (node, command) = (leader.clone(), command.clone());
            tokio::spawn(async move {
                for _ in 0..156 {
                    node.propose(command.clone()).await.expect("propose");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let after = leader.status();
    let n = after.entries_appended - before.entries_appended;
    println!(
        "concurrent (3 nodes): {n} entries from 64 tasks in {:?} ({:.0}/s), {} leader flushes",
        start.elapsed(),
        n as f64 / start.elapsed().as_secs_f64(),
        after.flushes - before.flushes
    );
    for node in &nodes {
        node.shutdown();
    }
}

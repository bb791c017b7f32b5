//! What the latency examples share: a trivial state machine and a percentile.

use std::time::Duration;

use dlock_cluster::StateMachine;

/// Counts commands; replies with the count.
pub struct Counter(pub u64);

impl StateMachine for Counter {
    fn apply(&mut self, _index: u64, _command: &[u8]) -> Vec<u8> {
        self.0 += 1;
        self.0.to_be_bytes().to_vec()
    }
    fn snapshot(&mut self) -> dlock_cluster::SnapshotJob {
        let image = self.0.to_be_bytes().to_vec();
        Box::new(move || image)
    }
    fn restore(&mut self, _index: u64, data: &[u8]) -> Result<(), String> {
        self.0 = u64::from_be_bytes(data.try_into().map_err(|_| "bad snapshot".to_string())?);
        Ok(())
    }
}

/// The `p` quantile (0.0-1.0) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

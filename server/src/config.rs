//! dlockd's configuration: one typed struct, every default in [`Config::default`], validated at
//! start-up with precise messages.
//!
//! Every field can be set by a command-line flag or by an environment variable named
//! `DLOCKD_<FIELD>` (for example `--client-addr` / `DLOCKD_CLIENT_ADDR`); flags win. The binary
//! (`main.rs`) does the parsing; this module only holds the values and their rules.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Error;

/// The default address clients connect to (`DLOCK_ENDPOINTS` of the client defaults to it).
pub const DEFAULT_CLIENT_ADDR: &str = "127.0.0.1:7700";
/// The default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "dlockd-data";

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
    /// The address the client API (gRPC `dlock.v1.Dlock`) listens on. Port 0 picks a free port.
    pub client_addr: SocketAddr,
    /// TTL granted to sessions that ask for 0, in milliseconds.
    pub session_ttl_ms_default: u64,
    /// Smallest TTL a session can get, in milliseconds; smaller requests are raised to it.
    pub session_ttl_ms_min: u64,
    /// Largest TTL a session can get, in milliseconds; larger requests are lowered to it.
    pub session_ttl_ms_max: u64,
    /// How often the leader writes the keepalive times it has seen into the log, in milliseconds.
    /// A new leader treats a session as certainly dead when its checkpointed last keepalive is
    /// older than its TTL plus this interval; other sessions get a full TTL of grace.
    pub checkpoint_interval_ms: u64,
    /// Raft tick interval in milliseconds (election timeout = 10 ticks, heartbeat = 2 ticks).
    pub tick_ms: u64,
    /// Take a state-machine snapshot (and compact the log) every this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Largest client request the server decodes, in bytes; larger ones are refused with
    /// `RESOURCE_EXHAUSTED` before they are parsed.
    pub request_bytes_max: usize,
    /// Most concurrent in-flight requests per client connection; further ones queue in HTTP/2
    /// flow control.
    pub requests_per_connection_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            client_addr: DEFAULT_CLIENT_ADDR.parse().expect("valid default address"),
            session_ttl_ms_default: 10_000,
            session_ttl_ms_min: 500,
            session_ttl_ms_max: 600_000,
            checkpoint_interval_ms: 1_000,
            tick_ms: 100,
            snapshot_interval_entries: 10_000,
            request_bytes_max: 64 * 1024,
            requests_per_connection_max: 1_024,
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
        Ok(())
    }

    /// The TTL a session asking for `requested_ms` gets (0 = default), clamped to the limits.
    pub fn grant_ttl_ms(&self, requested_ms: u64) -> u64 {
        if requested_ms == 0 {
            self.session_ttl_ms_default
        } else {
            requested_ms.clamp(self.session_ttl_ms_min, self.session_ttl_ms_max)
        }
    }

    /// The Raft tick interval.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
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
    fn ttl_requests_are_clamped() {
        let config = Config::default();
        assert_eq!(config.grant_ttl_ms(0), 10_000);
        assert_eq!(config.grant_ttl_ms(1), 500);
        assert_eq!(config.grant_ttl_ms(u64::MAX), 600_000);
        assert_eq!(config.grant_ttl_ms(3_000), 3_000);
    }
}

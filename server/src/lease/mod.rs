//! Session leases: how a session stays alive while its client is heard, and how the leader ends
//! it when it is not. The whole protocol, in one place:
//!
//! # The client's keepalive stream
//!
//! A session is opened with a TTL (`OpenSession`; the node clamps the request with
//! [`Config::grant_ttl_ms`]) and kept alive over one bidirectional `KeepAlive` gRPC stream to
//! the leader: one request every third of its lease, reconnected on any node when it breaks
//! (`client/src/session/tasks.rs`). The client measures its lease conservatively from when a
//! renewed keepalive was *sent*, and shortens it by the cluster's longest election timeout
//! (`OpenSessionReply.lease_margin_ms`, [`Config::election_timeout_max_ms`]); see
//! `client/src/session/lease.rs`.
//!
//! # Renewal at the leader: in memory, with proof of leadership
//!
//! The `keep_alive` handler (`server/src/grpc/keepalive.rs`) answers only on a leader whose
//! [`Timers`] were rebuilt for the current term (`Replica::timers_ready`; a keepalive that
//! reaches a new leader waits briefly for the rebuild). It renews the lease in memory at once
//! ([`Timers::touch`]: a full TTL from now, and the session is marked for the next checkpoint),
//! and then answers only after a [`LeaseConfirmer`] round, one ReadIndex that started *after*
//! the keepalive arrived, has confirmed that this node led in the same term when the round
//! started and when it ended (one retry if a round fails). Rounds are shared by every keepalive
//! that arrives meanwhile. Without that proof the answer is "not the leader": a deposed,
//! isolated or stalled leader never tells a client its lease was renewed while the real leader
//! may expire the session. The [`Touch`] decides the reply: `Renewed` with the TTL, `Expiring`
//! (the lease already ran out: reported as expired), or `Unknown`, which is only believed after
//! a ReadIndex shows the namespace has no such session; a session the namespace has but the
//! timers lack (a snapshot installed after the rebuild) is adopted with a full TTL
//! ([`Timers::adopt`]). **Keepalives never touch the Raft log.**
//!
//! # Checkpoints: silence measured on one clock
//!
//! The leader's clock (the timer task in `clock.rs`) proposes a `Checkpoint` every
//! `checkpoint_interval_ms` while any session is tracked, even if nobody was heard, so that the
//! silence of dead sessions keeps accruing. It carries durations on this leader's monotonic
//! clock only: the time since its previous checkpoint (`elapsed_ms`) and, for each session heard
//! since ([`Timers::take_checkpoint`], at most [`CHECKPOINT_SESSIONS_MAX`]), how long ago it was
//! last heard. The namespace sums `elapsed_ms` into its watched time
//! ([`Namespace::watched_ms`]); a session's silence ([`SessionInfo::silence_ms`]) is the watched
//! time since a leader last heard it. A checkpoint that is not committed hands its sessions to
//! the next one ([`Timers::checkpoint_lost`]). Wall-clock stamps (`now_unix_ms`) are kept for
//! the record only and never compared.
//!
//! # Becoming leader: rebuild with grace
//!
//! A node that becomes leader first does a ReadIndex (so the namespace has applied everything
//! committed), then [`Timers::rebuild`]s every deadline from the namespace, publishes the term
//! (`Replica::timers_term`, which lets keepalives be answered) and proposes a term-start
//! checkpoint with `elapsed_ms` 0 (time without a leader never counts against a session). Every
//! session gets a full TTL of grace from the rebuild, except one whose silence exceeds twice its
//! TTL plus one checkpoint interval: it was certainly dead while leaders watched and expires at
//! once (twice, because the latest renewal may not have reached a checkpoint). A pending wait
//! gets its timeout minus the watched time it already waited (`PendingWait::waited_ms`). A node
//! that stops leading clears its timers; followers keep theirs up to date through `apply`
//! (`Machine` in `server/src/replica.rs`) but act on none of them.
//!
//! # Expiry
//!
//! When a session's deadline passes, the timer task marks it expiring ([`Timers::take_due`]; no
//! keepalive can revive it from then on) and proposes `ExpireSession`, retried after a short
//! backoff if the proposal fails ([`Timers::retry_session`]). Applying it ends the session in
//! the namespace (its handles close, its waits fail, its mutexes are abandoned) and removes its
//! timer. Wait timeouts run on the same timers and propose `TimeoutWait`.
//!
//! # Where the rest lives
//!
//! * The TTL bounds are in [`crate::config`]: [`Config::session_ttl_ms_default`],
//!   [`Config::session_ttl_ms_min`] and [`Config::session_ttl_ms_max`] (capped by
//!   [`SESSION_TTL_MS_LIMIT`]), [`Config::checkpoint_interval_ms`] (capped by
//!   [`CHECKPOINT_INTERVAL_MS_LIMIT`]), and [`Config::validate`], which requires the minimum TTL
//!   to exceed twice [`Config::election_timeout_max_ms`] so that a session outlives a failover.
//! * The replicated session state is in `namespace::session` (`server/src/namespace/session.rs`):
//!   each session's `ttl_ms` and the watched time at which it was last heard, summarized as
//!   [`SessionInfo`]; the commands are [`Command::OpenSession`], [`Command::Checkpoint`] and
//!   [`Command::ExpireSession`].
//!
//! [`Config::grant_ttl_ms`]: crate::config::Config::grant_ttl_ms
//! [`Config::election_timeout_max_ms`]: crate::config::Config::election_timeout_max_ms
//! [`Config::session_ttl_ms_default`]: crate::config::Config::session_ttl_ms_default
//! [`Config::session_ttl_ms_min`]: crate::config::Config::session_ttl_ms_min
//! [`Config::session_ttl_ms_max`]: crate::config::Config::session_ttl_ms_max
//! [`Config::checkpoint_interval_ms`]: crate::config::Config::checkpoint_interval_ms
//! [`Config::validate`]: crate::config::Config::validate
//! [`SESSION_TTL_MS_LIMIT`]: crate::config::SESSION_TTL_MS_LIMIT
//! [`CHECKPOINT_INTERVAL_MS_LIMIT`]: crate::config::CHECKPOINT_INTERVAL_MS_LIMIT
//! [`Namespace::watched_ms`]: crate::namespace::Namespace::watched_ms
//! [`SessionInfo`]: crate::namespace::SessionInfo
//! [`SessionInfo::silence_ms`]: crate::namespace::SessionInfo::silence_ms
//! [`Command::OpenSession`]: crate::namespace::Command::OpenSession
//! [`Command::Checkpoint`]: crate::namespace::Command::Checkpoint
//! [`Command::ExpireSession`]: crate::namespace::Command::ExpireSession

pub(crate) mod clock;
mod confirm;
mod timers;

pub use clock::CHECKPOINT_SESSIONS_MAX;
pub use confirm::LeaseConfirmer;
pub(crate) use timers::later;
pub use timers::{Timers, Touch};

//! The session's lease as the client measures it (see the module docs of `session`, "Lease
//! tracking"): the pure [`LeaseClock`] and the task that publishes its state changes on time.

use super::*;

/// The conservative lease clock (see the module docs). Pure: time is passed in.
#[derive(Debug, Clone)]
pub(crate) struct LeaseClock {
    /// When the request behind the latest renewal was sent.
    renewed_at: Instant,
    /// The client's lease: the TTL minus the cluster's longest election timeout.
    ttl: Duration,
    /// That election timeout.
    margin: Duration,
    /// Latched: once expired, always expired.
    expired: bool,
}

/// The client's lease for a TTL: the TTL less `margin`, but never less than half the TTL (a
/// server whose minimum TTL does not exceed twice its election timeout is misconfigured).
pub(crate) fn lease_for(ttl: Duration, margin: Duration) -> Duration {
    ttl.saturating_sub(margin).max(ttl / 2)
}

impl LeaseClock {
    pub(crate) fn new(sent_at: Instant, ttl: Duration, margin: Duration) -> LeaseClock {
        LeaseClock {
            renewed_at: sent_at,
            ttl: lease_for(ttl, margin),
            margin,
            expired: false,
        }
    }

    fn jeopardy_after(&self) -> Duration {
        self.ttl * 2 / 3
    }

    /// The state at `now`, without latching.
    pub(crate) fn state_at(&self, now: Instant) -> SessionState {
        if self.expired {
            return SessionState::Expired;
        }
        let elapsed = now.saturating_duration_since(self.renewed_at);
        if elapsed >= self.ttl {
            SessionState::Expired
        } else if elapsed >= self.jeopardy_after() {
            SessionState::Jeopardy
        } else {
            SessionState::Alive
        }
    }

    /// The state at `now`, latching expiry.
    pub(crate) fn observe(&mut self, now: Instant) -> SessionState {
        let state = self.state_at(now);
        if state == SessionState::Expired {
            self.expired = true;
        }
        state
    }

    /// A reply to a request sent at `sent_at` granted `ttl` more. Too late if the lease had
    /// already run out at `now`: expiry is terminal.
    pub(crate) fn renew(&mut self, sent_at: Instant, ttl: Duration, now: Instant) -> SessionState {
        if self.observe(now) == SessionState::Expired {
            return SessionState::Expired;
        }
        if sent_at > self.renewed_at {
            self.renewed_at = sent_at;
        }
        if !ttl.is_zero() {
            self.ttl = lease_for(ttl, self.margin);
        }
        self.observe(now)
    }

    pub(crate) fn expire(&mut self) {
        self.expired = true;
    }

    /// When the state changes next (absent renewals), or `None` once expired.
    pub(crate) fn next_transition(&self, now: Instant) -> Option<Instant> {
        match self.state_at(now) {
            SessionState::Alive => Some(self.renewed_at + self.jeopardy_after()),
            SessionState::Jeopardy => Some(self.renewed_at + self.ttl),
            SessionState::Expired => None,
        }
    }
}

/// Publishes lease-state changes on time, and sends the best-effort `CloseSession` once the
/// session is stopped or expired.
pub(super) async fn clock_task(shared: Arc<SessionCore>) {
    let mut stop = shared.stop_tx.subscribe();
    loop {
        let now = Instant::now();
        let state = shared.refresh(now);
        let next = shared
            .lease
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_transition(now);
        let Some(next) = next else { break };
        if state == SessionState::Expired || *stop.borrow() {
            break;
        }
        tokio::select! {
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep_until(next) => {}
        }
    }
    shared.mark_expired(super::DROPPED_BY_APPLICATION);
    if let Err(err) = shared.close_rpc().await {
        tracing::debug!(session = shared.id, error = %err, "best-effort CloseSession failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_goes_alive_jeopardy_expired_from_the_send_time() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(900);
        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        assert_eq!(l.state_at(t0), SessionState::Alive);
        assert_eq!(l.next_transition(t0), Some(t0 + Duration::from_millis(600)));
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(l.state_at(ms(599)), SessionState::Alive);
        assert_eq!(l.state_at(ms(600)), SessionState::Jeopardy);
        assert_eq!(l.next_transition(ms(600)), Some(ms(900)));
        assert_eq!(l.state_at(ms(899)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(900)), SessionState::Expired);
        assert_eq!(l.next_transition(ms(900)), None);

        // A renewal for a keepalive sent at 500 ms, received at 700 ms: alive until 1100.
        assert_eq!(l.renew(ms(500), ttl, ms(700)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1099)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1100)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(1400)), SessionState::Expired);

        // An older reply (sent before the current renewal) does not move the clock back.
        assert_eq!(l.renew(ms(100), ttl, ms(800)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1100)), SessionState::Jeopardy);

        // The server may grant another TTL.
        assert_eq!(
            l.renew(ms(800), Duration::from_millis(3000), ms(850)),
            SessionState::Alive
        );
        assert_eq!(l.state_at(ms(2799)), SessionState::Alive);
        assert_eq!(l.state_at(ms(3800)), SessionState::Expired);
    }

    #[test]
    fn the_lease_ends_an_election_timeout_before_the_ttl() {
        // TTL 3 s, longest election timeout 1 s: the client's lease is 2 s from the send time,
        // jeopardy from 1.33 s, so it gives up before any new leader can have expired it.
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = LeaseClock::new(t0, Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(l.state_at(ms(1_332)), SessionState::Alive);
        assert_eq!(l.state_at(ms(1_334)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(1_999)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(2_000)), SessionState::Expired);
        // Renewals keep the margin; a misconfigured margin never takes more than half the TTL.
        assert_eq!(
            l.renew(ms(1_000), Duration::from_secs(3), ms(1_100)),
            SessionState::Alive
        );
        assert_eq!(l.state_at(ms(2_999)), SessionState::Jeopardy);
        assert_eq!(l.state_at(ms(3_000)), SessionState::Expired);
        assert_eq!(
            lease_for(Duration::from_secs(2), Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn lease_expiry_is_terminal() {
        let t0 = Instant::now();
        let ttl = Duration::from_millis(300);
        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(l.observe(ms(300)), SessionState::Expired);
        // A late reply cannot revive it, even one for a request sent in time.
        assert_eq!(l.renew(ms(250), ttl, ms(310)), SessionState::Expired);
        assert_eq!(l.state_at(ms(260)), SessionState::Expired);

        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        l.expire();
        assert_eq!(l.state_at(t0), SessionState::Expired);
        assert_eq!(l.renew(t0, ttl, t0), SessionState::Expired);
    }

    #[test]
    fn late_reply_after_local_expiry_without_observation_stays_expired() {
        // Nobody observed the clock between 0 and 400 ms; the renewal arrives at 400 ms for a
        // request sent at 200 ms. The lease ran out at 300 ms, so the session stays expired.
        let t0 = Instant::now();
        let ttl = Duration::from_millis(300);
        let mut l = LeaseClock::new(t0, ttl, Duration::ZERO);
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(l.renew(ms(200), ttl, ms(400)), SessionState::Expired);
    }
}

//! Randomized tests: a simulated correct single-mutex service (FIFO grants, log-index fencing
//! tokens, lost replies, clients that give up or crash) produces histories that must pass, and
//! corrupted copies of them must fail.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};

use super::{PIN, acquire, poll, release};
use crate::history::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug)]
enum Ev {
    Start(usize),
    ServerAcquire(ClientId, OpId, bool),
    ServerRelease(ClientId, OpId),
    Reply(ClientId, OpId, Outcome),
    GiveUp(ClientId, OpId),
    ClientRelease(ClientId),
    ClientCrash(ClientId),
    Expire(ClientId),
}

/// Events by (time, sequence).
#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<std::cmp::Reverse<(Nanos, u64)>>,
    events: HashMap<u64, Ev>,
    seq: u64,
}

impl Schedule {
    fn at(&mut self, t: Nanos, ev: Ev) {
        self.seq += 1;
        self.heap.push(std::cmp::Reverse((t, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn pop(&mut self) -> Option<(Nanos, Ev)> {
        let std::cmp::Reverse((t, seq)) = self.heap.pop()?;
        Some((t, self.events.remove(&seq).expect("scheduled event")))
    }
}

/// A correct single-mutex service: FIFO grants, fencing token = log index.
#[derive(Default)]
struct Server {
    owner: Option<ClientId>,
    abandoned: bool,
    queue: VecDeque<(ClientId, OpId)>,
    index: u64,
    expired: HashSet<ClientId>,
}

impl Server {
    /// Applies one log entry.
    fn apply(&mut self, rng: &mut Rng) {
        self.index += 1 + rng.below(3);
    }

    /// Grants the mutex to the next live waiter, if any, at the current log index.
    fn grant_next(&mut self, now: Nanos, rng: &mut Rng, sched: &mut Schedule) {
        while let Some((client, op)) = self.queue.pop_front() {
            if self.expired.contains(&client) {
                continue;
            }
            self.owner = Some(client);
            let outcome = Outcome::Acquired {
                token: self.index,
                abandoned: std::mem::take(&mut self.abandoned),
            };
            sched.at(now + net(rng), Ev::Reply(client, op, outcome));
            return;
        }
    }
}

fn net(rng: &mut Rng) -> Nanos {
    1 + rng.below(15)
}

struct Worker {
    client: ClientId,
    incarnation: u64,
    rounds_left: usize,
    waiting: Option<OpId>,
}

fn worker_of(client: ClientId) -> usize {
    (client.0 / 1000 - 1) as usize
}

/// Simulates `workers` clients contending on one pinned mutex served by a correct
/// service: FIFO grants with growing log indices, lost replies, clients that give up and
/// lose their session, clients that crash while holding (abandonment after a TTL).
fn simulate(seed: u64, workers: usize, rounds: usize) -> History {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut h = History::new();
    h.add(
        PIN,
        Op::Create {
            name: "m".into(),
            kind: ObjectKind::Mutex,
            keep_open: true,
        },
        0,
        1,
        Outcome::Created {
            already_existed: false,
        },
    );
    let mut ws: Vec<Worker> = (0..workers)
        .map(|w| Worker {
            client: ClientId((w as u64 + 1) * 1000),
            incarnation: 0,
            rounds_left: rounds,
            waiting: None,
        })
        .collect();
    let mut server = Server::default();
    let mut sched = Schedule::default();
    for w in 0..workers {
        sched.at(2 + rng.below(20), Ev::Start(w));
    }
    while let Some((now, ev)) = sched.pop() {
        match ev {
            Ev::Start(w) => {
                let worker = &mut ws[w];
                if worker.rounds_left == 0 {
                    continue;
                }
                worker.rounds_left -= 1;
                let is_poll = rng.chance(20);
                let op = if is_poll { poll() } else { acquire() };
                let op = h.push(worker.client, None, op, now);
                worker.waiting = Some(op);
                let client = worker.client;
                sched.at(now + net(&mut rng), Ev::ServerAcquire(client, op, is_poll));
                if !is_poll {
                    sched.at(now + 300 + rng.below(600), Ev::GiveUp(client, op));
                }
            }
            Ev::ServerAcquire(client, op, is_poll) => {
                if server.expired.contains(&client) {
                    continue;
                }
                server.apply(&mut rng);
                if server.owner.is_none() {
                    server.queue.push_front((client, op));
                    server.grant_next(now, &mut rng, &mut sched);
                } else if is_poll {
                    let reply = Ev::Reply(client, op, Outcome::TimedOut);
                    sched.at(now + net(&mut rng), reply);
                } else {
                    server.queue.push_back((client, op));
                }
            }
            Ev::ServerRelease(client, op) => {
                server.apply(&mut rng);
                if server.owner == Some(client) && !server.expired.contains(&client) {
                    server.owner = None;
                    sched.at(now + net(&mut rng), Ev::Reply(client, op, Outcome::Ok));
                    server.grant_next(now, &mut rng, &mut sched);
                } else {
                    let reply = Ev::Reply(client, op, Outcome::Failed(288));
                    sched.at(now + net(&mut rng), reply);
                }
            }
            Ev::Expire(client) => {
                server.apply(&mut rng);
                server.expired.insert(client);
                if server.owner == Some(client) {
                    server.owner = None;
                    server.abandoned = true;
                    server.grant_next(now, &mut rng, &mut sched);
                }
            }
            Ev::Reply(client, op, outcome) => {
                let w = worker_of(client);
                if ws[w].client != client || ws[w].waiting != Some(op) {
                    continue; // the client gave up on it
                }
                let is_release = matches!(h.get(op).op, Op::Release { .. });
                if !is_release && rng.chance(4) {
                    sched.at(now, Ev::GiveUp(client, op)); // reply lost
                    continue;
                }
                ws[w].waiting = None;
                if is_release && rng.chance(5) {
                    h.complete(op, now, Outcome::Unknown); // reply lost; it was applied
                } else {
                    h.complete(op, now, outcome);
                }
                if let Outcome::Acquired { .. } = outcome {
                    let hold = now + 1 + rng.below(40);
                    if rng.chance(7) {
                        sched.at(hold, Ev::ClientCrash(client));
                    } else {
                        sched.at(hold, Ev::ClientRelease(client));
                    }
                } else {
                    sched.at(now + 1 + rng.below(30), Ev::Start(w));
                }
            }
            Ev::ClientRelease(client) => {
                let w = worker_of(client);
                let op = h.push(client, None, release(), now);
                ws[w].waiting = Some(op);
                sched.at(now + net(&mut rng), Ev::ServerRelease(client, op));
            }
            Ev::GiveUp(client, op) => {
                let w = worker_of(client);
                if ws[w].client != client || ws[w].waiting != Some(op) {
                    continue;
                }
                h.complete(op, now, Outcome::Unknown);
                lose_session(&mut h, &mut ws[w], now);
                sched.at(now + 50 + rng.below(100), Ev::Expire(client));
                sched.at(now + 1, Ev::Start(w));
            }
            Ev::ClientCrash(client) => {
                let w = worker_of(client);
                lose_session(&mut h, &mut ws[w], now);
                sched.at(now + 50 + rng.below(100), Ev::Expire(client));
                sched.at(now + 1 + rng.below(30), Ev::Start(w));
            }
        }
    }
    h
}

/// Records the loss and moves the worker to a new client id (a new session).
fn lose_session(h: &mut History, worker: &mut Worker, now: Nanos) {
    let id = h.push(worker.client, None, Op::LostSession, now);
    h.complete(id, now, Outcome::Ok);
    worker.incarnation += 1;
    worker.client = ClientId(worker.client.0 - worker.client.0 % 1000 + worker.incarnation);
    worker.waiting = None;
}

/// Indices of records that report a grant.
fn grant_records(h: &History) -> Vec<OpId> {
    h.records
        .iter()
        .filter(|r| matches!(r.outcome(), Outcome::Acquired { .. }))
        .map(|r| r.id)
        .collect()
}

fn set_token(h: &mut History, id: OpId, token: u64) {
    for (_, o) in &mut h.records[id.0].outcomes {
        if let Outcome::Acquired { token: t, .. } = o {
            *t = token;
        }
    }
}

fn token_of(h: &History, id: OpId) -> u64 {
    match h.get(id).outcome() {
        Outcome::Acquired { token, .. } => token,
        _ => unreachable!(),
    }
}

#[test]
fn randomized_correct_histories_pass_and_corrupted_ones_fail() {
    let mut totals = Report::default();
    for seed in 1..=100u64 {
        let h = simulate(seed, 2 + (seed % 5) as usize, 30);
        let report = match check(&h) {
            Ok(r) => r,
            Err(vs) => {
                let lines: Vec<String> = vs.iter().take(5).map(ToString::to_string).collect();
                panic!(
                    "seed {seed}: a correct history was rejected:\n{}",
                    lines.join("\n")
                );
            }
        };
        totals.abandon_pairs_checked += report.abandon_pairs_checked;
        totals.released_holds_checked += report.released_holds_checked;
        totals.release_waits_checked += report.release_waits_checked;
        totals.abandoned_grants += report.abandoned_grants;
        totals.unknown_outcomes += report.unknown_outcomes;

        let grants = grant_records(&h);
        let mut rng = Rng(seed);
        // Corruption 1: a grant reports another client's token.
        let pairs: Vec<(OpId, OpId)> = grants
            .iter()
            .flat_map(|&x| grants.iter().map(move |&y| (x, y)))
            .filter(|&(x, y)| h.get(x).client != h.get(y).client)
            .collect();
        let (x, y) = pairs[rng.below(pairs.len() as u64) as usize];
        let mut bad = h.clone();
        set_token(&mut bad, y, token_of(&h, x));
        let err = check(&bad).expect_err("duplicate token accepted");
        assert!(
            err.iter().any(|v| v.kind == ViolationKind::DuplicateToken),
            "seed {seed}: {err:?}"
        );
        // Corruption 2: swap the tokens of two grants ordered in real time.
        let ordered: Vec<(OpId, OpId)> = grants
            .iter()
            .flat_map(|&x| grants.iter().map(move |&y| (x, y)))
            .filter(|&(x, y)| h.get(x).hi() < h.get(y).invoke)
            .collect();
        let (x, y) = ordered[rng.below(ordered.len() as u64) as usize];
        let mut bad = h.clone();
        set_token(&mut bad, x, token_of(&h, y));
        set_token(&mut bad, y, token_of(&h, x));
        let err = check(&bad).expect_err("tokens out of real-time order accepted");
        assert!(
            err.iter().any(|v| v.kind == ViolationKind::TokenOrder),
            "seed {seed}: {err:?}"
        );
    }
    // The simulation exercised the ambiguous paths and the checks were not vacuous.
    assert!(totals.abandoned_grants > 0, "{totals:?}");
    assert!(totals.unknown_outcomes > 0, "{totals:?}");
    assert!(totals.abandon_pairs_checked > 0, "{totals:?}");
    assert!(totals.released_holds_checked > 0, "{totals:?}");
    assert!(totals.release_waits_checked > 0, "{totals:?}");
}

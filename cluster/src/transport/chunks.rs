//! Chunking of peer messages (see the transport module docs, "Chunks"): the sender's split of
//! one encoded message into envelopes, and the receiver's strict reassembly.

use std::sync::Arc;

use dlock_proto::v1::RaftEnvelope;
use tonic::Status;

use crate::node::Stamp;

/// One envelope to send: a range of a shared payload.
pub(super) struct Chunk {
    from: u64,
    stamp: Stamp,
    payload: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
    /// The whole message's size on the first chunk of a chunked message, else 0.
    message_bytes: u64,
}

impl Chunk {
    /// The envelopes that carry `payload` from node `from`: one if it fits `chunk_bytes`, else
    /// one per chunk of `chunk_bytes`. Each
    /// chunk is copied out only when it is about to be sent.
    pub(super) fn split(
        from: u64,
        stamp: Stamp,
        payload: Vec<u8>,
        chunk_bytes: usize,
    ) -> Vec<Chunk> {
        let payload = Arc::new(payload);
        let total = payload.len();
        if total <= chunk_bytes {
            return vec![Chunk {
                from,
                stamp,
                payload,
                range: 0..total,
                message_bytes: 0,
            }];
        }
        (0..total)
            .step_by(chunk_bytes)
            .map(|start| Chunk {
                from,
                stamp,
                payload: payload.clone(),
                range: start..(start + chunk_bytes).min(total),
                message_bytes: if start == 0 { total as u64 } else { 0 },
            })
            .collect()
    }

    pub(super) fn build(self) -> RaftEnvelope {
        let total = self.payload.len();
        let more = self.range.end < total;
        let payload = if self.range.start == 0 && !more {
            // The only chunk: hand the buffer over without copying when nobody else holds it.
            Arc::try_unwrap(self.payload).unwrap_or_else(|shared| shared.to_vec())
        } else {
            self.payload[self.range].to_vec()
        };
        RaftEnvelope {
            from: self.from,
            payload,
            more,
            message_bytes: self.message_bytes,
            cluster_id: self.stamp.cluster_id,
            from_incarnation: self.stamp.from_incarnation,
            to_incarnation: self.stamp.to_incarnation,
        }
    }
}

/// A chunked message being put back together on a stream.
pub(super) struct Reassembly {
    from: u64,
    /// The size announced by the first chunk.
    pub(super) expected: u64,
    pub(super) buffer: Vec<u8>,
    chunks: u64,
}

/// Chunk sequences are checked strictly: a violation ends the stream (the sender reconnects,
/// raft resends). Returns a whole message once its last chunk is in.
pub(super) fn reassemble(
    partial: &mut Option<Reassembly>,
    envelope: RaftEnvelope,
    limit: u64,
) -> Result<Option<Vec<u8>>, Status> {
    let RaftEnvelope {
        from,
        payload,
        more,
        message_bytes,
        ..
    } = envelope;
    let Some(mut current) = partial.take() else {
        if !more {
            if message_bytes != 0 && message_bytes != payload.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "unchunked message of {} bytes announces {message_bytes}",
                    payload.len()
                )));
            }
            return Ok(Some(payload));
        }
        if message_bytes > limit {
            tracing::warn!(
                from,
                message_bytes,
                limit,
                "chunked raft message above the limit refused"
            );
            return Err(Status::resource_exhausted(format!(
                "raft message of {message_bytes} bytes is above this node's limit of {limit}"
            )));
        }
        if message_bytes <= payload.len() as u64 {
            return Err(Status::invalid_argument(format!(
                "first chunk of {} bytes, with more to come, announces a message of {message_bytes}",
                payload.len()
            )));
        }
        // Grow with the data rather than trusting the announcement with memory up front.
        let mut buffer = Vec::with_capacity((message_bytes as usize).min(64 * 1024 * 1024));
        buffer.extend_from_slice(&payload);
        *partial = Some(Reassembly {
            from,
            expected: message_bytes,
            buffer,
            chunks: 1,
        });
        return Ok(None);
    };
    if from != current.from || message_bytes != 0 {
        return Err(Status::invalid_argument(
            "chunk does not continue the message in progress",
        ));
    }
    let size = current.buffer.len() as u64 + payload.len() as u64;
    if size > current.expected || (!more && size != current.expected) {
        return Err(Status::invalid_argument(format!(
            "chunks add up to {size} bytes{}, the message announced {}",
            if more { " so far" } else { "" },
            current.expected
        )));
    }
    current.buffer.extend_from_slice(&payload);
    current.chunks += 1;
    if more {
        *partial = Some(current);
        return Ok(None);
    }
    tracing::debug!(
        from,
        bytes = current.buffer.len(),
        chunks = current.chunks,
        "chunked raft message reassembled"
    );
    Ok(Some(current.buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_larger_than_a_chunk_is_split_and_reassembled() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for chunk_bytes in [1, 7, 4096, 9_999, 10_000, 1 << 20] {
            let envelopes: Vec<RaftEnvelope> =
                Chunk::split(7, Stamp::default(), payload.clone(), chunk_bytes)
                    .into_iter()
                    .map(Chunk::build)
                    .collect();
            assert_eq!(envelopes.len(), payload.len().div_ceil(chunk_bytes));
            let mut partial = None;
            let mut out = Vec::new();
            for (i, envelope) in envelopes.into_iter().enumerate() {
                assert!(envelope.payload.len() <= chunk_bytes);
                assert_eq!(envelope.from, 7);
                if let Some(message) = reassemble(&mut partial, envelope, 10_000).unwrap() {
                    out.push((i, message));
                }
            }
            assert!(partial.is_none());
            assert_eq!(out.len(), 1, "chunk_bytes {chunk_bytes}");
            assert_eq!(out[0].1, payload, "chunk_bytes {chunk_bytes}");
        }
    }

    #[test]
    fn chunked_messages_above_the_limit_or_malformed_are_refused() {
        let chunks = |n: usize| -> Vec<RaftEnvelope> {
            Chunk::split(7, Stamp::default(), vec![1u8; n], 10)
                .into_iter()
                .map(Chunk::build)
                .collect()
        };
        // Above the limit: refused at the first chunk, before anything is buffered.
        let mut partial = None;
        let first = chunks(101).remove(0);
        let status = reassemble(&mut partial, first, 100).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(partial.is_none());
        // At the limit: fine.
        let mut partial = None;
        let whole: Vec<_> = chunks(100)
            .into_iter()
            .filter_map(|e| reassemble(&mut partial, e, 100).unwrap())
            .collect();
        assert_eq!(whole, vec![vec![1u8; 100]]);
        // A chunk missing: the sizes do not add up.
        let mut partial = None;
        let mut sequence = chunks(50);
        sequence.remove(2);
        let results: Vec<_> = sequence
            .into_iter()
            .map(|e| reassemble(&mut partial, e, 100))
            .collect();
        assert_eq!(
            results.last().unwrap().as_ref().unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // Another message's first chunk in the middle of one.
        let mut partial = None;
        let mut sequence = chunks(50);
        assert!(
            reassemble(&mut partial, sequence.remove(0), 100)
                .unwrap()
                .is_none()
        );
        let intruder = chunks(30).remove(0);
        assert!(reassemble(&mut partial, intruder, 100).is_err());
        // Too many bytes for the announcement.
        let mut partial = None;
        let mut first = chunks(50).remove(0);
        first.message_bytes = 15;
        assert!(reassemble(&mut partial, first, 100).unwrap().is_none());
        let mut next = chunks(50).remove(1);
        next.more = true;
        assert!(reassemble(&mut partial, next, 100).is_err());
    }

    /// The peer decoder fuzzed: any sequence of envelopes (random senders, flags, announced
    /// sizes and payloads, well-formed chunked messages among them) is either reassembled into
    /// exactly what was sent or refused; nothing panics, and the buffer never holds more than
    /// the announced size, which never exceeds the limit. `DLOCK_FUZZ_CASES` sets the number
    /// of sequences (default 256).
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        const LIMIT: u64 = 4096;

        fn envelope() -> impl Strategy<Value = RaftEnvelope> {
            (
                0u64..4,
                proptest::collection::vec(any::<u8>(), 0..600),
                any::<bool>(),
                prop_oneof![
                    Just(0u64),
                    0u64..8192,
                    Just(u64::MAX),
                    Just(LIMIT),
                    Just(LIMIT + 1)
                ],
            )
                .prop_map(|(from, payload, more, message_bytes)| RaftEnvelope {
                    from,
                    payload,
                    more,
                    message_bytes,
                    ..RaftEnvelope::default()
                })
        }

        /// A well-formed message of up to 3000 bytes split into chunks of 500.
        fn honest() -> impl Strategy<Value = (u64, Vec<u8>)> {
            (1u64..4, proptest::collection::vec(any::<u8>(), 1..3000))
        }

        fn cases() -> u32 {
            std::env::var("DLOCK_FUZZ_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(cases()))]

            #[test]
            fn envelope_sequences_are_reassembled_exactly_or_refused(
                noise in proptest::collection::vec(envelope(), 0..12),
                honest in proptest::collection::vec(honest(), 0..3),
                order in any::<u64>(),
            ) {
                // Units: one noise envelope, or all the chunks of one honest message in order.
                let mut units: Vec<(Vec<RaftEnvelope>, Option<Vec<u8>>)> =
                    noise.into_iter().map(|e| (vec![e], None)).collect();
                let mut seed = order;
                for (from, payload) in honest {
                    let chunks = Chunk::split(from, Stamp::default(), payload.clone(), 500)
                        .into_iter()
                        .map(Chunk::build)
                        .collect();
                    let at = (seed % (units.len() as u64 + 1)) as usize;
                    seed = seed.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15;
                    units.insert(at, (chunks, Some(payload)));
                }
                let mut partial = None;
                for (envelopes, expected) in units {
                    let last = envelopes.len() - 1;
                    for (i, envelope) in envelopes.into_iter().enumerate() {
                        match reassemble(&mut partial, envelope, LIMIT) {
                            Ok(Some(message)) => {
                                // A whole message comes out only at an honest message's last
                                // chunk, and is exactly what was sent (noise is one envelope).
                                if let Some(expected) = &expected {
                                    prop_assert_eq!(i, last);
                                    prop_assert_eq!(&message, expected);
                                }
                            }
                            Ok(None) => {}
                            // A refusal ends the stream; the sender's next stream starts with
                            // its next message, so the rest of this one is never seen.
                            Err(_) => {
                                partial = None;
                                break;
                            }
                        }
                        if let Some(current) = &partial {
                            prop_assert!(current.buffer.len() as u64 <= current.expected);
                            prop_assert!(current.expected <= LIMIT.max(3000));
                        }
                    }
                }
            }
        }
    }
}

//! Byte formats of the peer address registry and of the snapshot envelope (`Snapshot.data` on
//! the wire and in a snapshot file): see the storage module docs, "Peer addresses".

use std::collections::BTreeMap;

/// First bytes of a snapshot envelope ([`encode_snapshot_data`]), with a format version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"dlksnap1";

/// Peer addresses longer than this are refused when decoding (a corrupt length field).
const ADDRESS_BYTES_MAX: usize = 4096;

/// Encodes a peer address registry: `be_u32(count)`, then per peer `be_u64(id) ‖
/// be_u32(len) ‖ utf8 address`, in id order. Also the format of a conf change's context.
pub fn encode_peers(peers: &BTreeMap<u64, String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + peers.len() * 32);
    out.extend_from_slice(&(peers.len() as u32).to_be_bytes());
    for (id, address) in peers {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&(address.len() as u32).to_be_bytes());
        out.extend_from_slice(address.as_bytes());
    }
    out
}

/// Decodes the prefix of `data` written by [`encode_peers`]; returns the registry and the rest.
///
/// # Errors
///
/// A description of what is malformed.
pub fn decode_peers(data: &[u8]) -> Result<(BTreeMap<u64, String>, &[u8]), String> {
    fn take<'a>(data: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
        if data.len() < n {
            return Err(format!("peer registry truncated in {what}"));
        }
        let (head, tail) = data.split_at(n);
        *data = tail;
        Ok(head)
    }
    let mut rest = data;
    let count = u32::from_be_bytes(take(&mut rest, 4, "count")?.try_into().expect("4 bytes"));
    let mut peers = BTreeMap::new();
    for _ in 0..count {
        let id = u64::from_be_bytes(take(&mut rest, 8, "id")?.try_into().expect("8 bytes"));
        let len =
            u32::from_be_bytes(take(&mut rest, 4, "length")?.try_into().expect("4 bytes")) as usize;
        if len > ADDRESS_BYTES_MAX {
            return Err(format!("peer {id} address of {len} bytes is too long"));
        }
        let address = std::str::from_utf8(take(&mut rest, len, "address")?)
            .map_err(|e| format!("peer {id} address is not UTF-8: {e}"))?;
        peers.insert(id, address.to_string());
    }
    Ok((peers, rest))
}

/// The `Snapshot.data` sent to other nodes: the magic `dlksnap1` ‖ [`encode_peers`] ‖ the state
/// machine image.
pub fn encode_snapshot_data(peers: &BTreeMap<u64, String>, image: &[u8]) -> Vec<u8> {
    let registry = encode_peers(peers);
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + registry.len() + image.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&registry);
    out.extend_from_slice(image);
    out
}

/// Splits a `Snapshot.data` written by [`encode_snapshot_data`] into the peer registry and the
/// state machine image.
///
/// # Errors
///
/// A description of what is malformed.
pub fn decode_snapshot_data(data: &[u8]) -> Result<(BTreeMap<u64, String>, &[u8]), String> {
    let Some(rest) = data.strip_prefix(SNAPSHOT_MAGIC.as_slice()) else {
        return Err("snapshot data lacks the dlock envelope header".into());
    };
    decode_peers(rest)
}

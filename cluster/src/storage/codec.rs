//! Byte formats of the peer registry (addresses and incarnations) and of the snapshot envelope
//! (`Snapshot.data` on the wire and in a snapshot file): see the storage module docs, "Peer
//! addresses".

use std::collections::{BTreeMap, BTreeSet};

/// First bytes of a snapshot envelope ([`encode_snapshot_data`]), with a format version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"dlksnap2";

/// The envelope of stores written before incarnations were recorded: addresses only.
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"dlksnap1";

/// Marks the incarnation section that follows the addresses in an encoded [`Registry`].
const INCARNATIONS_TAG: &[u8; 4] = b"inc1";

/// Retired incarnations kept at most; beyond it the entries with the lowest node id (then
/// lowest incarnation) are forgotten, and such a removed data directory, if it came back, would
/// be refused by nothing but its certificate (it has this cluster's id).
pub const RETIRED_MAX: usize = 4096;

/// Incarnation records refused when decoding beyond this many (a corrupt count).
const INCARNATIONS_MAX: usize = 1 << 20;

/// What the cluster knows of its members, replicated through the log and carried by snapshots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// Node id → peer address, for every member.
    pub addresses: BTreeMap<u64, String>,
    /// Node id → incarnation of its data directory, for the members whose incarnation has
    /// been recorded (a member missing here is taken at its word until the leader records it).
    pub incarnations: BTreeMap<u64, u64>,
    /// `(node id, incarnation)` of data directories removed from the cluster: refused forever.
    pub retired: BTreeSet<(u64, u64)>,
}

impl Registry {
    /// A registry of addresses only.
    pub fn with_addresses(addresses: BTreeMap<u64, String>) -> Registry {
        Registry {
            addresses,
            ..Registry::default()
        }
    }

    /// Retires `(id, incarnation)`, forgetting the lowest entries beyond [`RETIRED_MAX`].
    pub fn retire(&mut self, id: u64, incarnation: u64) {
        self.retired.insert((id, incarnation));
        while self.retired.len() > RETIRED_MAX {
            self.retired.pop_first();
        }
    }
}

/// Encodes `registry`: its addresses ([`encode_peers`]), then, if it holds any incarnation,
/// `inc1 ‖ be_u32(n) ‖ (be_u64(id) ‖ be_u64(incarnation))* ‖ be_u32(m) ‖ (be_u64(id) ‖
/// be_u64(incarnation))*` (current, then retired). Also the format of a conf change's context.
pub fn encode_registry(registry: &Registry) -> Vec<u8> {
    let mut out = encode_peers(&registry.addresses);
    if registry.incarnations.is_empty() && registry.retired.is_empty() {
        return out;
    }
    out.extend_from_slice(INCARNATIONS_TAG);
    out.extend_from_slice(&(registry.incarnations.len() as u32).to_be_bytes());
    for (id, incarnation) in &registry.incarnations {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&incarnation.to_be_bytes());
    }
    out.extend_from_slice(&(registry.retired.len() as u32).to_be_bytes());
    for (id, incarnation) in &registry.retired {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&incarnation.to_be_bytes());
    }
    out
}

/// Decodes the prefix of `data` written by [`encode_registry`] (or by [`encode_peers`] alone);
/// returns the registry and the rest.
///
/// # Errors
///
/// A description of what is malformed.
pub fn decode_registry(data: &[u8]) -> Result<(Registry, &[u8]), String> {
    let (addresses, mut rest) = decode_peers(data)?;
    let mut registry = Registry::with_addresses(addresses);
    let Some(tail) = rest.strip_prefix(INCARNATIONS_TAG.as_slice()) else {
        return Ok((registry, rest));
    };
    rest = tail;
    let pairs = |rest: &mut &[u8], what: &str| -> Result<Vec<(u64, u64)>, String> {
        let count = u32::from_be_bytes(take(rest, 4, what)?.try_into().expect("4 bytes")) as usize;
        if count > INCARNATIONS_MAX {
            return Err(format!("{count} {what} records is too many"));
        }
        let mut out = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let id = u64::from_be_bytes(take(rest, 8, what)?.try_into().expect("8 bytes"));
            let inc = u64::from_be_bytes(take(rest, 8, what)?.try_into().expect("8 bytes"));
            out.push((id, inc));
        }
        Ok(out)
    };
    registry.incarnations = pairs(&mut rest, "incarnation")?.into_iter().collect();
    registry.retired = pairs(&mut rest, "retired incarnation")?
        .into_iter()
        .collect();
    Ok((registry, rest))
}

fn take<'a>(data: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if data.len() < n {
        return Err(format!("peer registry truncated in {what}"));
    }
    let (head, tail) = data.split_at(n);
    *data = tail;
    Ok(head)
}

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

/// The `Snapshot.data` sent to other nodes: the magic `dlksnap2` ‖ [`encode_registry`] ‖ the
/// state machine image.
pub fn encode_snapshot_data(registry: &Registry, image: &[u8]) -> Vec<u8> {
    let encoded = encode_registry(registry);
    let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + encoded.len() + image.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&encoded);
    out.extend_from_slice(image);
    out
}

/// Splits a `Snapshot.data` written by [`encode_snapshot_data`] (or by a dlock that wrote
/// addresses only, magic `dlksnap1`) into the registry and the state machine image.
///
/// # Errors
///
/// A description of what is malformed.
pub fn decode_snapshot_data(data: &[u8]) -> Result<(Registry, &[u8]), String> {
    if let Some(rest) = data.strip_prefix(SNAPSHOT_MAGIC.as_slice()) {
        return decode_registry(rest);
    }
    if let Some(rest) = data.strip_prefix(SNAPSHOT_MAGIC_V1.as_slice()) {
        let (addresses, image) = decode_peers(rest)?;
        return Ok((Registry::with_addresses(addresses), image));
    }
    Err("snapshot data lacks the dlock envelope header".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_round_trip_with_and_without_incarnations() {
        let addresses = BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".to_string())]);
        let plain = Registry::with_addresses(addresses.clone());
        let full = Registry {
            addresses,
            incarnations: BTreeMap::from([(1, 11), (2, 22)]),
            retired: BTreeSet::from([(3, 33)]),
        };
        for registry in [plain, full] {
            let image = b"image bytes";
            let data = encode_snapshot_data(&registry, image);
            let (back, rest) = decode_snapshot_data(&data).unwrap();
            assert_eq!(back, registry);
            assert_eq!(rest, image);
        }
        // An addresses-only context (as older dlocks wrote) still decodes.
        let old = encode_peers(&BTreeMap::from([(4, "d".into())]));
        let (back, rest) = decode_registry(&old).unwrap();
        assert_eq!(back.addresses.len(), 1);
        assert!(back.incarnations.is_empty() && rest.is_empty());
        // A truncated incarnation section is refused, not misread.
        let data = encode_registry(&Registry {
            incarnations: BTreeMap::from([(1, 2)]),
            ..Registry::default()
        });
        assert!(decode_registry(&data[..data.len() - 3]).is_err());
    }
}

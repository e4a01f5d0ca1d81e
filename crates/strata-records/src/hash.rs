//! Stable, fast 64-bit hashes of bytes: the same value on every machine and in every run, so dedup
//! signatures, n-gram sets and surrogate choices made by one task or one run agree with another's.

/// A fast, deterministic 64-bit hash of bytes (FxHash's multiply-rotate over 8-byte words, then a
/// finaliser), for the in-memory sets of the quality rules: SipHash's resistance to chosen inputs is not
/// needed there, and it cost half the time of the repetition rules.
#[must_use]
pub fn hash_bytes(b: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = b.len() as u64;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let mut tail = [0u8; 8];
    tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h.rotate_left(5) ^ u64::from_le_bytes(tail)).wrapping_mul(K);
    mix(h)
}

/// MurmurHash3's 64-bit finaliser: a bijection that mixes every input bit into every output bit.
#[must_use]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

//! HMAC-MD5 resumed from pre-computed contexts, for CRAM-MD5 (RFC 2195).
//!
//! Dovecot and Cyrus store a CRAM-MD5 secret not as the password but as the two MD5 states
//! reached after absorbing `key ^ ipad` and `key ^ opad` (RFC 2104 §4 "precomputations"): the
//! server can still compute HMAC-MD5 over a fresh challenge, but the password is not kept.
//!
//! Why this is hand-written: no crate resumes HMAC (or MD5) from a stored state. `hmac` keeps
//! its inner/outer cores private, and md-5 0.10 keeps its compression function and core state
//! private (`mod compress` is not `pub`), so the MD5 compression function (RFC 1321 §3.4) is
//! written here and checked against the md-5 crate and the hmac crate in the tests below.

use md5::{Digest, Md5};

/// MD5 initial chaining values (RFC 1321 §3.3).
pub(crate) const MD5_INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Per-step left rotations (RFC 1321 §3.4).
const SHIFTS: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, //
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, //
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, //
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

/// `floor(abs(sin(i + 1)) * 2^32)` (RFC 1321 §3.4, table T).
const SINES: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

const BLOCK: usize = 64;

/// One MD5 compression of a 64-byte block into `state` (RFC 1321 §3.4).
pub(crate) fn compress(state: &mut [u32; 4], block: &[u8; BLOCK]) {
    let mut words = [0u32; 16];
    for (w, chunk) in words.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    for i in 0..64 {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let f = f
            .wrapping_add(a)
            .wrapping_add(SINES[i])
            .wrapping_add(words[g]);
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(f.rotate_left(SHIFTS[i]));
    }
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

/// Finishes an MD5 computation that has already absorbed `prefix_len` bytes into `state`
/// (a multiple of 64), feeding `data` and the padding whose length field counts the prefix.
fn finish(mut state: [u32; 4], prefix_len: u64, data: &[u8]) -> [u8; 16] {
    let mut blocks = data.chunks_exact(BLOCK);
    for block in &mut blocks {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(block);
        compress(&mut state, &b);
    }
    let rest = blocks.remainder();
    let bit_len = prefix_len
        .wrapping_add(data.len() as u64)
        .wrapping_mul(8)
        .to_le_bytes();
    let mut tail = [0u8; 2 * BLOCK];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let tail_len = if rest.len() < BLOCK - 8 {
        BLOCK
    } else {
        2 * BLOCK
    };
    tail[tail_len - 8..tail_len].copy_from_slice(&bit_len);
    for block in tail[..tail_len].chunks_exact(BLOCK) {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(block);
        compress(&mut state, &b);
    }
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

/// The inner and outer HMAC-MD5 contexts for `key` (RFC 2104 §2 and §4).
pub(crate) fn hmac_md5_contexts(key: &[u8]) -> ([u32; 4], [u32; 4]) {
    let mut block = [0u8; BLOCK];
    // RFC 2104 §2: keys longer than the block size are hashed first.
    if key.len() > BLOCK {
        block[..16].copy_from_slice(&md5(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut ipad = block;
    let mut opad = block;
    for (i, o) in ipad.iter_mut().zip(opad.iter_mut()) {
        *i ^= 0x36;
        *o ^= 0x5c;
    }
    let mut inner = MD5_INIT;
    compress(&mut inner, &ipad);
    let mut outer = MD5_INIT;
    compress(&mut outer, &opad);
    (inner, outer)
}

/// HMAC-MD5 of `message` from pre-computed contexts.
pub(crate) fn hmac_md5_from_contexts(
    inner: &[u32; 4],
    outer: &[u32; 4],
    message: &[u8],
) -> [u8; 16] {
    let inner_digest = finish(*inner, BLOCK as u64, message);
    finish(*outer, BLOCK as u64, &inner_digest)
}

/// Plain MD5, through the md-5 crate.
pub(crate) fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};

    fn reference_hmac(key: &[u8], msg: &[u8]) -> [u8; 16] {
        let mut mac = Hmac::<Md5>::new_from_slice(key).unwrap();
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    #[test]
    fn md5_compression_matches_md5_crate_at_every_padding_boundary() {
        for len in 0..300usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            assert_eq!(finish(MD5_INIT, 0, &data), md5(&data), "len {len}");
        }
    }

    #[test]
    fn hmac_md5_from_contexts_matches_hmac_crate_for_all_key_lengths() {
        // 0..=200 covers short keys, exactly one block, and keys > 64 bytes that RFC 2104
        // hashes first.
        for key_len in (0..=200usize).step_by(7).chain([63, 64, 65, 128]) {
            let key: Vec<u8> = (0..key_len).map(|i| (i * 13 + 1) as u8).collect();
            let (inner, outer) = hmac_md5_contexts(&key);
            for msg_len in [0usize, 1, 42, 55, 56, 63, 64, 65, 119, 120, 200] {
                let msg: Vec<u8> = (0..msg_len).map(|i| (i * 3) as u8).collect();
                assert_eq!(
                    hmac_md5_from_contexts(&inner, &outer, &msg),
                    reference_hmac(&key, &msg),
                    "key {key_len} msg {msg_len}"
                );
            }
        }
    }

    #[test]
    fn cram_md5_rfc2195_digest_from_contexts() {
        let (inner, outer) = hmac_md5_contexts(b"tanstaaftanstaaf");
        let digest = hmac_md5_from_contexts(
            &inner,
            &outer,
            b"<1896.697170952@postoffice.reston.mci.net>",
        );
        assert_eq!(hex::encode(digest), "b913a602c7eda7a495b4e6e7334d3890");
    }
}

//! Test data both ends of a stream can produce without sharing it.

/// `len` deterministic pseudo-random bytes for stream `stream` (xorshift64).
pub fn pattern(stream: usize, len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ stream as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        assert_eq!(pattern(1, 64), pattern(1, 64));
        assert_ne!(pattern(1, 64), pattern(2, 64));
        assert_eq!(&pattern(3, 100)[..10], &pattern(3, 10)[..]);
    }
}

//! The differential parser fuzz of the XDP program (issue 7, "Bad input"):
//! a seeded generator of random and mutated frames, and a host-side
//! reference that says what must happen to each.

pub mod frames;
pub mod mutate;
pub mod reference;

/// The default seed: fixed, so CI runs the same packets every time and a
/// failure reproduces. `VIPD_FUZZ_SEED` picks another.
pub const DEFAULT_SEED: u64 = 0x7669_7064_6675_7a7a;
/// The default number of packets (issue 7: at least 100 000).
pub const DEFAULT_COUNT: u64 = 100_000;

/// splitmix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough to pick
/// mutations; no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    /// True with probability `num`/`den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

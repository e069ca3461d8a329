//! The benchmarks behind `cargo xtask bench` (binary `vip-bench`): `dataplane`
//! (ns per packet through BPF_PROG_TEST_RUN), `failover` (the outage clients
//! see when an LB fails, vipd against keepalived + HAProxy), `reaction` (how
//! long a failing apiserver keeps new flows), `e2e` (vipd against HAProxy
//! and no load balancer, end to end), `sync-lag` (how long after a flow's
//! first packet its entry exists on the peer LB) and `flood` (200 watch
//! streams through a connection flood). They build on the harness (`netns`,
//! `scenario`, `standin`, `kubeadm_ha`) and are not part of `cargo test`.

use std::time::Duration;

pub mod dataplane;
pub mod e2e;
pub mod failover;
pub mod failover_bgp;
pub mod flood;
pub mod reaction;
pub mod sync_lag;

/// A small xorshift for the jitter: the failure must fall at a random point
/// of the advert interval, or a fixed phase would bias the cases.
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock.
    pub fn from_clock() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Jitter(seed | 1)
    }

    /// Uniform in [0, max).
    pub fn next(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter(42);
        for _ in 0..1000 {
            assert!(j.next(Duration::from_millis(100)) < Duration::from_millis(100));
        }
    }
}

//! Benchmark only (`cargo xtask bench dataplane`): makes every run of
//! BPF_PROG_TEST_RUN with `repeat > 1` a new flow. The kernel runs the
//! program again on the buffer it already rewrote (net/bpf/test_run.c), so
//! without this a repeated SYN would take the new-flow path once and the
//! established path after. The agent never attaches the program that uses
//! this (it attaches `vip` alone).

use aya_ebpf::programs::XdpContext;

use crate::{
    maps::BENCH_SEQ,
    parse::{ETH_P_IP, EthHdr, Ipv4Hdr, TcpHdr, ptr_at},
};

/// Gives the frame (untagged IPv4, 20-byte header, TCP) flow number `n`
/// from `BENCH_SEQ` and counts it: the source port is `n`'s low 16 bits,
/// the last two bytes of the source address its high 16 bits, so 2^32 runs
/// see 2^32 distinct 5-tuples. One slot shared by all CPUs (the repeat loop
/// may move to another CPU when it reschedules, net/bpf/test_run.c), bumped
/// without an atomic: the benchmark runs one thread, so no two runs
/// overlap. The checksums are left
/// stale: mode dsr neither checks nor rewrites them, so the path measured is
/// the one a valid frame takes.
#[inline(always)]
pub fn next_flow(ctx: &XdpContext) -> Result<(), ()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, size_of::<EthHdr>())?;
    let tcp = ptr_at::<TcpHdr>(ctx, size_of::<EthHdr>() + size_of::<Ipv4Hdr>())?;
    // SAFETY: bounds checked by ptr_at; all fields need 2-byte alignment,
    // which the frame's start gives them.
    unsafe {
        if (*eth).proto != ETH_P_IP || (*ip).ver_ihl != 0x45 || (*ip).proto != 6 {
            return Err(());
        }
    }
    let seq = BENCH_SEQ.get_ptr_mut(0).ok_or(())?;
    // SAFETY: an array value pointer, valid during this run; see above for
    // why a plain increment suffices.
    let n = unsafe {
        let n = *seq;
        *seq = n.wrapping_add(1);
        n
    };
    // SAFETY: bounds checked as above.
    unsafe {
        (*ip).saddr[2] = (n >> 24) as u8;
        (*ip).saddr[3] = (n >> 16) as u8;
        (*tcp).source = (n as u16).to_be();
    }
    Ok(())
}

//! Benchmark only (`cargo xtask bench dataplane`): makes every run of
//! BPF_PROG_TEST_RUN with `repeat > 1` a new flow. The kernel runs the
//! program again on the buffer it already rewrote (net/bpf/test_run.c), so
//! without this a repeated SYN would take the new-flow path once and the
//! established path after. The agent never attaches the program that uses
//! this (it attaches `vip` alone).

use aya_ebpf::programs::XdpContext;

use crate::{
    maps::{BENCH_FRAME, BENCH_SEQ},
    mem,
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

/// The bytes `save` keeps: Ethernet, a 20-byte IPv4 header and a 20-byte TCP
/// header, everything mode nat rewrites in the benchmark's frames.
pub const SAVED_BYTES: usize = 54;

/// Copies the frame's first `SAVED_BYTES` into this CPU's `BENCH_FRAME`, for
/// `restore` after the run: with them the next repeat of a translating
/// program sees the same input (`vip_bench_restore`).
#[inline(always)]
pub fn save(ctx: &XdpContext) -> Result<(), ()> {
    let src = ptr_at::<[u8; SAVED_BYTES]>(ctx, 0)?;
    let dst = BENCH_FRAME.get_ptr_mut(0).ok_or(())?;
    // SAFETY: bounds checked; a frame's start and a map value are 2-aligned.
    unsafe { mem::copy_u16s::<{ SAVED_BYTES / 2 }>(dst.cast(), src.cast()) };
    Ok(())
}

/// Writes back what `save` kept. Fails if the frame became shorter (a
/// program that cut it, which the benchmark's cases never take).
#[inline(always)]
pub fn restore(ctx: &XdpContext) -> Result<(), ()> {
    let dst = ptr_at::<[u8; SAVED_BYTES]>(ctx, 0)?;
    let src = BENCH_FRAME.get_ptr(0).ok_or(())?;
    // SAFETY: as in `save`.
    unsafe { mem::copy_u16s::<{ SAVED_BYTES / 2 }>(dst.cast(), src.cast()) };
    Ok(())
}

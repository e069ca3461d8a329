//! vipd's XDP program: load-balances TCP/UDP for configured VIPs to backends,
//! entirely in the kernel, driven only by maps the agent writes.
//!
//! Layout: `parse` (bounds-checked header walk), `maps` (every map, one line on
//! its role), `lb` (service lookup, connection table, Maglev), `fwd` (dsr and
//! RST rewrites), `confirm` (new flows wait in their own tables until the
//! client confirms them, so a flood cannot evict established ones), `encap` (dsr across subnets: IPIP / IPv6 in IPv6, ICMP too big), `decap` (its
//! backend side without tunnel drivers), `nat` (address translation and FIB next hop), `csum` (checksum arithmetic), `stats` (per-CPU counters),
//! `mem` (zeroing and copies that stay inline), `trace` (`vipd trace`'s
//! per-packet decision records, off unless asked for).
#![no_std]
#![no_main]

mod bench;
mod confirm;
mod csum;
mod decap;
mod encap;
mod fwd;
mod lb;
mod maps;
mod mem;
mod nat;
mod parse;
mod stats;
mod trace;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use vip_common::Reason;

/// What the program decided, and why. Every exit of `try_vip` is one of these,
/// and `vip` counts it in exactly one place.
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
    /// Backend the packet was sent to, for per-backend counters.
    pub backend: Option<u32>,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_PASS,
            reason,
            backend: None,
        }
    }
    #[inline(always)]
    pub const fn drop(reason: Reason) -> Self {
        Verdict {
            action: xdp_action::XDP_DROP,
            reason,
            backend: None,
        }
    }
    #[inline(always)]
    pub const fn tx(reason: Reason, backend: u32) -> Self {
        Verdict {
            action: xdp_action::XDP_TX,
            reason,
            backend: Some(backend),
        }
    }

    /// One u64 for returning from a BPF subprogram: action (8 bits), reason
    /// (8 bits), has-backend (1 bit), backend id (32 bits).
    #[inline(always)]
    pub fn pack(&self) -> u64 {
        let (has, id) = match self.backend {
            Some(id) => (1u64, id as u64),
            None => (0, 0),
        };
        (self.action as u64 & 0xff) | (self.reason as u64 & 0xff) << 8 | has << 16 | id << 32
    }

    #[inline(always)]
    pub fn unpack(v: u64) -> Self {
        Verdict {
            action: (v & 0xff) as u32,
            reason: Reason::from_index(((v >> 8) & 0xff) as u32)
                .unwrap_or(Reason::DropAdjustFailed),
            backend: if v & (1 << 16) != 0 {
                Some((v >> 32) as u32)
            } else {
                None
            },
        }
    }
}

/// The load balancer. Thin entry, one exit: the verdict is counted here.
#[xdp]
pub fn vip(ctx: XdpContext) -> u32 {
    run::<true>(&ctx)
}

/// `vip`'s body, shared with `vip_bench_new_flow` so that the benchmark
/// measures exactly the production path. `TRACE` false compiles the
/// decision trace out (`vip_bench_untraced`): the benchmark's measure of
/// what the trace check costs while tracing is off.
#[inline(always)]
fn run<const TRACE: bool>(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let traced = TRACE && trace::wanted(ctx);
    let v = lb::try_vip(ctx, traced);
    stats::count(&v, len);
    if traced {
        // Not `v.pack()`: with no backend the id is undefined, and LLVM
        // shifted whatever register held it, a pointer here, which the
        // verifier refuses ("pointer arithmetic with <<= operator
        // prohibited"). A choice between it and a constant stays a branch.
        let backend = match v.backend {
            Some(id) => id,
            None => trace::NO_BACKEND,
        };
        trace::emit(ctx, v.action, v.reason as u32, backend);
    }
    v.action
}

/// Benchmark only, never attached: `vip` without the trace check, so
/// `cargo xtask bench dataplane` measures the check's cost (tracing off)
/// side by side with `vip` in one run.
#[xdp]
pub fn vip_bench_untraced(ctx: XdpContext) -> u32 {
    run::<false>(&ctx)
}

/// A program that passes everything. Attached to the switch-side veth peer so
/// that native XDP_TX on the other end works (veth delivers XDP_TX frames only if
/// the peer runs XDP, kernel drivers/net/veth.c), and the benchmark baseline.
#[xdp]
pub fn vip_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Mode dsr across subnets, the backend's side where the kernel has no
/// tunnel drivers: strips IPIP / IPv6-in-IPv6 outer headers (`decap`).
#[xdp]
pub fn vip_decap(ctx: XdpContext) -> u32 {
    decap::decap(&ctx)
}

/// Benchmark baseline: swap the Ethernet addresses and transmit.
#[xdp]
pub fn vip_bench_tx(ctx: XdpContext) -> u32 {
    match fwd::swap_macs(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_PASS,
    }
}

/// Benchmark only, never attached (the agent attaches `vip`): `vip` on a
/// frame given a new 5-tuple first (`bench::next_flow`), so that every run of
/// a repeated BPF_PROG_TEST_RUN takes the whole new-flow path, connection
/// table insert included. A frame it cannot renumber is aborted, which the
/// benchmark sees as runs not counted as sent.
#[xdp]
pub fn vip_bench_new_flow(ctx: XdpContext) -> u32 {
    if bench::next_flow(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    run::<true>(&ctx)
}

/// Benchmark only, never attached: `vip` on the frame, which is then put
/// back as it came (`bench::save`, `bench::restore`), so that every run of
/// a repeated BPF_PROG_TEST_RUN sees the same input even where `vip`
/// rewrites addresses and ports (mode nat, both ways). The copy is part of
/// what it measures; the benchmark runs mode dsr through it too, so the
/// ratio of the two compares like with like. A frame it cannot save or
/// restore is aborted, which the benchmark sees as runs not counted.
#[xdp]
pub fn vip_bench_restore(ctx: XdpContext) -> u32 {
    if bench::save(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    let action = run::<true>(&ctx);
    if bench::restore(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never called.
    loop {}
}

/// "Dual MIT/GPL" is GPL-compatible, which the kernel requires for some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

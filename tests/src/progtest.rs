//! Running the real XDP program through BPF_PROG_TEST_RUN, for the program
//! tests and their fixtures.

use aya::programs::{TestRun, TestRunOptions};
use vip_common::Reason;
use vip_userspace::dataplane::{
    Maps,
    kernel::{KernelMaps, LoadOptions, PROG_VIP},
    programmer::{DesiredService, Programmer},
};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "program tests load XDP programs into the kernel and need root: run `cargo xtask test` as root"
        );
    }
}

/// A loaded program, its maps written through the agent's own programmer.
pub struct Dp {
    pub prog: Programmer<KernelMaps>,
    /// Ingress interface index passed in the test context (0: the kernel's
    /// default, loopback). The FIB lookups of mode nat need a real interface,
    /// and the calling thread must be in that interface's namespace.
    pub ingress_ifindex: u32,
}

impl Dp {
    pub fn new(services: &[DesiredService]) -> Dp {
        require_root();
        let maps = KernelMaps::load(&LoadOptions {
            conntrack_capacity: 4096,
            pin_dir: None,
        })
        .expect("load the XDP object");
        let mut prog = Programmer::new(maps);
        prog.apply(services).expect("write the maps");
        Dp {
            prog,
            ingress_ifindex: 0,
        }
    }

    /// Tells the program this interface's MAC, as the agent does before it
    /// attaches: frames for a service addressed elsewhere are then passed
    /// (`pass_other_host`). Left unset, the program serves any MAC.
    pub fn set_local_mac(&mut self, mac: [u8; 6]) {
        self.prog
            .maps_mut()
            .set_local_mac(mac)
            .expect("write LOCAL_MAC");
    }

    /// The backend id the connection table holds for the client flow from
    /// `client`:`sport`; panics naming the flow if there is none.
    pub fn conntrack_backend(&self, client: std::net::IpAddr, sport: u16) -> u32 {
        let (_, c) = vip_userspace::config::addr_bytes(client);
        let ct = self
            .prog
            .maps()
            .conntrack()
            .expect("read the connection table");
        ct.iter()
            .find(|(k, _)| k.saddr == c && u16::from_be(k.sport_be) == sport)
            .map(|(_, v)| v.backend_id)
            .unwrap_or_else(|| panic!("no connection-table entry for {client}:{sport}"))
    }

    /// Runs one packet without checking counters; returns (action, output).
    pub fn run_raw(&self, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex. The kernel wants data = 0 (no
        // metadata) and data_end = the input length (net/bpf/test_run.c).
        let ctx: [u32; 6] = [0, input.len() as u32, 0, self.ingress_ifindex, 0, 0];
        let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let res = self
            .prog
            .maps()
            .xdp(PROG_VIP)
            .expect("program")
            .test_run(TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: if self.ingress_ifindex != 0 {
                    Some(&ctx_bytes)
                } else {
                    None
                },
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
    }

    /// One reason counter summed over CPUs: a single map lookup, where
    /// `reason_counters` does one per reason (the fuzz reads one per packet).
    pub fn reason_counter(&mut self, reason: Reason) -> vip_common::Counter {
        let map = self
            .prog
            .maps_mut()
            .raw_map_mut("REASONS")
            .expect("REASONS map");
        let m: aya::maps::PerCpuArray<&aya::maps::MapData, vip_common::Counter> =
            aya::maps::PerCpuArray::try_from(&*map).expect("REASONS is a per-CPU array");
        let per_cpu = m.get(&(reason as u32), 0).expect("read a reason counter");
        per_cpu
            .iter()
            .fold(vip_common::Counter::default(), |a, c| vip_common::Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            })
    }

    /// Runs one packet; returns (action, output frame) and checks that exactly
    /// one packet was counted, under `reason`.
    pub fn run(&self, input: &[u8], reason: Reason) -> (u32, Vec<u8>) {
        let before = self.prog.maps().reason_counters().expect("read counters");
        let r = self.run_raw(input);
        let after = self.prog.maps().reason_counters().expect("read counters");
        let moved: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .map(|r| (*r, after[*r as usize].packets - before[*r as usize].packets))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(moved, vec![(reason, 1)], "reason counters moved");
        r
    }
}

/// Runs `f` with a freshly loaded program inside `node`'s namespace, with
/// its `eth0` as the ingress interface and its MAC as the program's: the
/// FIB lookups (mode nat, encapsulation) then see the namespace's routes and
/// neighbours.
pub fn with_dp_on<T: Send>(
    node: &crate::netns::Node,
    services: Vec<DesiredService>,
    f: impl FnOnce(&mut Dp) -> T + Send,
) -> T {
    let node = node.clone();
    crate::netns::in_netns(&node.ns, move || {
        let mut dp = Dp::new(&services);
        dp.ingress_ifindex = node.ifindex;
        dp.set_local_mac(node.mac);
        f(&mut dp)
    })
}

/// Loads the XDP object in namespace `ns` and attaches its program `prog` to
/// `iface` natively; the returned maps keep it attached until dropped.
pub fn attach_in(ns: &str, prog: &'static str, iface: &str) -> KernelMaps {
    crate::netns::in_netns(ns, || {
        let mut m = KernelMaps::load(&LoadOptions {
            conntrack_capacity: 1024,
            pin_dir: None,
        })
        .expect("load the XDP object");
        m.attach(
            prog,
            iface,
            vip_userspace::dataplane::kernel::AttachMode::Native,
        )
        .unwrap_or_else(|e| panic!("attach {prog} to {iface} in {ns}: {e}"));
        m
    })
}

/// A service on `vip`:`port` answering unservable TCP with an RST, at the
/// default Maglev size. `snat` matters for mode nat only.
pub fn service(
    vip: std::net::IpAddr,
    port: u16,
    proto: u8,
    mode: u8,
    snat: vip_common::AddrBytes,
    backends: Vec<vip_userspace::dataplane::programmer::DesiredBackend>,
) -> DesiredService {
    let (family, addr) = vip_userspace::config::addr_bytes(vip);
    DesiredService {
        key: vip_common::ServiceKey {
            addr,
            port_be: port.to_be(),
            proto,
            family,
        },
        mode,
        flags: vip_common::SVC_F_RST_UNSERVABLE,
        snat_addr: snat,
        table_size: vip_common::MAGLEV_DEFAULT_SIZE,
        backends,
    }
}

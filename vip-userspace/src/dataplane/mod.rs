//! The dataplane: the XDP program and its maps, behind a small trait.
//!
//! [`Maps`] is the only way the agent touches the kernel's maps. [`kernel`]
//! implements it with aya against the loaded program, [`mem`] in memory for
//! tests of the control logic. [`programmer::Programmer`] keeps a shadow of what
//! it wrote and turns desired state into the smallest set of map writes, in an
//! order that never lets a packet see a half-written table.

pub mod flows;
pub mod kernel;
pub mod mem;
pub mod metrics;
pub mod poke;
pub mod programmer;

use thiserror::Error;
use vip_common::{
    BackendStats, BackendValue, Counter, EncapValue, Globals, ServiceKey, ServiceValue,
};

use crate::maglev::MaglevError;

/// The XDP object built by build.rs (aya-build) from vip-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip"));

#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error(
        "loading the XDP program failed; vipd needs root (CAP_BPF, CAP_NET_ADMIN) and a kernel with BPF and XDP"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "this vipd was built with AYA_BUILD_SKIP=1 and has no XDP program; rebuild without it (cargo xtask build)"
    )]
    NotBuilt,
    #[error("the XDP object has no program {0:?}; the build is broken")]
    NoProgram(&'static str),
    #[error("the XDP object has no map {0:?}; the build is broken")]
    NoMap(&'static str),
    #[error("verifying or loading program {name:?} failed")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    #[error("attaching XDP to {iface:?} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("too many {what}: the dataplane holds at most {max}")]
    Full { what: &'static str, max: u32 },
    #[error(transparent)]
    Maglev(#[from] MaglevError),
    #[error(
        "{path}: pinning failed; is bpffs mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)?"
    )]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "vipd needs {cap}: {why}. Grant it (the DaemonSet's securityContext.capabilities.add, the unit's AmbientCapabilities); see README.md#capabilities"
    )]
    Capability {
        cap: &'static str,
        why: &'static str,
        #[source]
        source: Box<DataplaneError>,
    },
    #[error(
        "the pinned maps hold {what}: they were not written by a compatible vipd, or are corrupted. Nothing was changed and the pinned program keeps forwarding with them; remove the pins with `vipd detach --interface IF` and start vipd again (established flows then get an RST at their next packet)"
    )]
    Corrupt { what: String },
    #[error(
        "{path}: pinning or taking over the XDP link failed; if no vipd runs, remove it with `vipd detach`"
    )]
    Adopt {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// The map operations the agent needs, and nothing else.
pub trait Maps {
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()>;
    fn remove_service(&mut self, key: &ServiceKey) -> Result<()>;
    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()>;
    /// Writes a `BE_F_ENCAP` backend's outer source and path MTU (`ENCAP`),
    /// before the backend entry that sets the flag.
    fn set_encap(&mut self, id: u32, value: &EncapValue) -> Result<()>;
    /// Reads it back, for adoption.
    fn read_encap(&self, id: u32) -> Result<EncapValue>;
    /// Writes one `MAGLEV` entry (index from `vip_common::maglev_index`).
    fn set_maglev(&mut self, index: u32, backend_id: u32) -> Result<()>;
    /// Writes the program-wide settings.
    fn set_globals(&mut self, g: &Globals) -> Result<()>;
    /// Writes one word of the service-port bitmap.
    fn set_port_word(&mut self, word: u32, bits: u64) -> Result<()>;
    /// What an earlier agent left in the maps, for adoption: every service,
    /// every non-empty backend slot, a run of Maglev entries, and the non-zero
    /// words of the port bitmap.
    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>>;
    fn read_backends(&self) -> Result<Vec<(u32, BackendValue)>>;
    fn read_maglev(&self, start: u32, len: u32) -> Result<Vec<u32>>;
    fn read_port_words(&self) -> Result<Vec<(u32, u64)>>;
    /// Reason counters summed over CPUs, indexed by `Reason as usize`.
    fn reason_counters(&self) -> Result<Vec<Counter>>;
    /// A backend's counters summed over CPUs.
    fn backend_counters(&self, id: u32) -> Result<BackendStats>;
}

/// The capability whose absence `text` (an error and its sources, as
/// printed) shows, with what needed it: the kernel says only "Operation not
/// permitted" or gives a verifier line, which names no capability.
pub fn missing_capability(text: &str) -> Option<(&'static str, &'static str)> {
    let eperm = text.contains("Operation not permitted");
    if text.contains("failed to create map") && eperm {
        // BPF_MAP_CREATE: CAP_BPF (kernel 5.8+, kernel/bpf/syscall.c).
        return Some(("CAP_BPF", "creating the BPF maps"));
    }
    if text.contains("pointer -= pointer prohibited") || text.contains("prohibited for !root") {
        // The verifier allows packet pointer arithmetic only to
        // "pointer-leak" capable loaders (bpf_allow_ptr_leaks: CAP_PERFMON).
        // Which refusal comes first depends on the order it walks the
        // program: `data_end - data`, or an offset added to a packet
        // pointer ("pointer arithmetic with it prohibited for !root",
        // kernel/bpf/verifier.c adjust_ptr_min_max_vals).
        return Some((
            "CAP_PERFMON",
            "the verifier accepts the program's packet bounds checks only from a CAP_PERFMON loader",
        ));
    }
    if text.contains("BPF_PROG_LOAD") && eperm {
        // XDP is a networking program type: loading it needs CAP_NET_ADMIN.
        return Some(("CAP_NET_ADMIN", "loading an XDP program"));
    }
    None
}

/// Wraps `e` with the capability its text shows missing, if any.
pub fn with_capability_hint(e: DataplaneError) -> DataplaneError {
    let mut text = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    match missing_capability(&text) {
        Some((cap, why)) => DataplaneError::Capability {
            cap,
            why,
            source: Box::new(e),
        },
        None => e,
    }
}

#[cfg(test)]
mod capability_tests {
    use super::missing_capability;

    /// The texts the kernel and aya gave on kernel 6.18 with one capability
    /// dropped (tests/tests/capabilities.rs runs the real thing).
    #[test]
    fn each_refusal_names_its_capability() {
        for (text, want) in [
            (
                "loading the XDP program failed: failed to create map `SERVICES` with code -1: Operation not permitted (os error 1)",
                Some("CAP_BPF"),
            ),
            (
                "verifying or loading program \"vip\" failed: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)",
                Some("CAP_NET_ADMIN"),
            ),
            (
                "verifying or loading program \"vip\" failed: Verifier output: ... R4 pointer -= pointer prohibited",
                Some("CAP_PERFMON"),
            ),
            (
                "verifying or loading program \"vip\" failed: Verifier output: ... R4 has pointer with unsupported alu operation, pointer arithmetic with it prohibited for !root",
                Some("CAP_PERFMON"),
            ),
            (
                "verifying or loading program \"vip\" failed: the BPF_PROG_LOAD syscall returned Invalid argument (os error 22)",
                None,
            ),
        ] {
            assert_eq!(missing_capability(text).map(|c| c.0), want, "{text}");
        }
    }
}

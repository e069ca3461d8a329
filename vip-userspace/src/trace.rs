//! `vipd trace`: the XDP program's decisions for one address or port, on
//! demand, from a second process beside the running agent.
//!
//! The program (vip-ebpf `trace`) checks its `TRACE` filter on every packet
//! and, for a packet that matches, writes one aya-log record to its
//! `AYA_LOGS` ring. This module finds both maps through the program attached
//! to the interface (its map ids, as aya-log's `EbpfLogger::init_from_id`
//! does), so the agent plays no part: it holds no logger, and a trace works
//! whatever state the agent is in. The filter is a lease (`until_ns`, checked
//! against the kernel's monotonic clock), renewed every second: a tracer
//! that exits switches it off, and one killed with SIGKILL leaves it on for
//! at most `TRACE_LEASE_NS`.
//!
//! Records carry numbers (reason, action, mode); names are rendered here
//! from vip-common, the one definition of the ABI.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, BorrowedFd},
    sync::{Arc, Mutex},
};

use aya::maps::{Array, Map, MapData, MapInfo};
use aya_log::EbpfLogger;
use thiserror::Error;
use vip_common::{
    FAMILY_V4, FAMILY_V6, MODE_DSR, MODE_NAT, Reason, TRACE_F_ADDR, TRACE_F_PORT,
    TRACE_FLOW_ESTABLISHED, TRACE_FLOW_NEW, TRACE_FLOW_REPLY, TRACE_LEASE_NS, TraceFilter,
};

use crate::dataplane::flows::monotonic_ns;

/// The program's filter map and aya-log's ring (vip-ebpf `maps`).
const FILTER_MAP: &str = "TRACE";
const LOG_MAP: &str = "AYA_LOGS";

#[derive(Debug, Error)]
pub enum TraceError {
    #[error(
        "no XDP program is attached to {iface} in this network namespace: is vipd running on this node? (`vipd status`; run `vipd trace` where vipd runs, in its namespace)"
    )]
    NotAttached { iface: String },
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error("program {id}: {what}: {source}")]
    Bpf {
        id: u32,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "the XDP program {id} has no {map} map: it is not vipd's, or a vipd built before `vipd trace` (restart vipd with this version)"
    )]
    NoMap { id: u32, map: &'static str },
    #[error(
        "vipd trace needs CAP_SYS_ADMIN: it opens the running program's maps by id (BPF_PROG_GET_FD_BY_ID), which the kernel allows only with it, and the vipd pod and unit do not grant it (README, Capabilities). Run it as root on the node, or from a debug pod with it (`kubectl debug node/NODE -it --profile=sysadmin --image=IMAGE -- vipd trace ...`, host network)"
    )]
    NeedsSysAdmin,
    #[error(
        "another `vipd trace` is tracing program {id} (its lease ends in {left_ms} ms): two tracers would split the records between them; stop the other one, or wait for its lease to end if it was killed"
    )]
    Busy { id: u32, left_ms: u64 },
}

/// What to trace: packets with this address and/or this port as source or
/// destination. Neither: every packet the program sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    pub addr: Option<IpAddr>,
    pub port: Option<u16>,
}

impl Filter {
    /// The map value for a lease ending at `until_ns`.
    pub fn value(&self, until_ns: u64) -> TraceFilter {
        let mut f = TraceFilter {
            until_ns,
            addr: [0; 16],
            port_be: 0,
            family: 0,
            flags: 0,
            _pad: [0; 4],
        };
        if let Some(a) = self.addr {
            let (family, bytes) = crate::config::addr_bytes(a);
            f.addr = bytes;
            f.family = family;
            f.flags |= TRACE_F_ADDR;
        }
        if let Some(p) = self.port {
            f.port_be = p.to_be();
            f.flags |= TRACE_F_PORT;
        }
        f
    }
}

/// aya-log's records as text, kept for `Tracer::records` (aya-log hands
/// each one to a `log::Log`).
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        if let Ok(mut v) = self.0.lock() {
            v.push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

/// A running program's trace switch and record ring. Dropping it switches
/// tracing off.
pub struct Tracer {
    id: u32,
    filter: Array<MapData, TraceFilter>,
    logger: EbpfLogger<Collect>,
    lines: Collect,
    on: Option<Filter>,
}

impl Tracer {
    /// The tracer of the XDP program attached to `iface` (in the calling
    /// thread's network namespace).
    pub fn for_interface(iface: &str) -> Result<Tracer, TraceError> {
        let id = crate::host::xdp_program_id(iface)?.ok_or_else(|| TraceError::NotAttached {
            iface: iface.to_owned(),
        })?;
        Tracer::for_program(id)
    }

    /// The tracer of loaded program `id` (a test's own program, for one).
    pub fn for_program(id: u32) -> Result<Tracer, TraceError> {
        let bpf = |what| {
            move |e: Box<dyn std::error::Error + Send + Sync>| TraceError::Bpf {
                id,
                what,
                source: e,
            }
        };
        let mut info = None;
        for p in aya::programs::loaded_programs() {
            match p {
                Ok(p) if p.id() == id => {
                    info = Some(p);
                    break;
                }
                Ok(_) => {}
                // Without CAP_SYS_ADMIN the walk fails at once (kernel/bpf/
                // syscall.c: bpf_obj_get_next_id and bpf_prog_get_fd_by_id
                // check capable(CAP_SYS_ADMIN)).
                Err(aya::programs::ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    return Err(TraceError::NeedsSysAdmin);
                }
                // A program unloaded while we walk: skip it.
                Err(_) => {}
            }
        }
        let info = info.ok_or_else(|| bpf("find the program")("no longer loaded".into()))?;
        let map_ids = info
            .map_ids()
            .map_err(|e| bpf("list its maps")(Box::new(e)))?
            .unwrap_or_default();
        let find = |name: &'static str| -> Result<MapData, TraceError> {
            let m = map_ids
                .iter()
                .filter_map(|m| MapInfo::from_id(*m).ok())
                .find(|m| m.name_as_str() == Some(name))
                .ok_or(TraceError::NoMap { id, map: name })?;
            MapData::from_id(m.id()).map_err(|e| bpf("open a map")(Box::new(e)))
        };
        let filter = Array::try_from(Map::Array(find(FILTER_MAP)?))
            .map_err(|e| bpf("open TRACE")(Box::new(e)))?;
        // The same lookup as aya-log's `init_from_id_with_logger`, which
        // opens the ring by the program's map ids too.
        find(LOG_MAP)?;
        let lines = Collect::default();
        let logger = EbpfLogger::init_from_id_with_logger(id, lines.clone())
            .map_err(|e| bpf("open AYA_LOGS")(Box::new(e)))?;
        Ok(Tracer {
            id,
            filter,
            logger,
            lines,
            on: None,
        })
    }

    /// The traced program's id.
    pub fn program_id(&self) -> u32 {
        self.id
    }

    /// The ring's fd: readable when records wait (for poll / `AsyncFd`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }

    fn current(&self) -> Result<TraceFilter, TraceError> {
        self.filter.get(&0, 0).map_err(|e| TraceError::Bpf {
            id: self.id,
            what: "read TRACE",
            source: Box::new(e),
        })
    }

    fn write(&mut self, v: &TraceFilter) -> Result<(), TraceError> {
        self.filter.set(0, v, 0).map_err(|e| TraceError::Bpf {
            id: self.id,
            what: "write TRACE",
            source: Box::new(e),
        })
    }

    /// Switches tracing on for `f`, for one lease. Refused while another
    /// tracer's lease runs. Records left in the ring by an earlier tracer
    /// are dropped first, so every record read after this is this trace's.
    pub fn start(&mut self, f: Filter) -> Result<(), TraceError> {
        let now = monotonic_ns();
        let cur = self.current()?;
        if cur.until_ns > now {
            return Err(TraceError::Busy {
                id: self.id,
                left_ms: (cur.until_ns - now) / 1_000_000,
            });
        }
        self.logger.flush();
        self.take_lines();
        self.write(&f.value(now + TRACE_LEASE_NS))?;
        self.on = Some(f);
        Ok(())
    }

    /// Extends the lease by `TRACE_LEASE_NS` from now; call it every second.
    pub fn renew(&mut self) -> Result<(), TraceError> {
        match self.on {
            Some(f) => self.write(&f.value(monotonic_ns() + TRACE_LEASE_NS)),
            None => Ok(()),
        }
    }

    /// Switches tracing off (the program then pays one load and one branch).
    pub fn stop(&mut self) -> Result<(), TraceError> {
        self.on = None;
        self.write(&f_off())
    }

    /// The records written since the last call, in ring order.
    pub fn records(&mut self) -> Vec<Result<Record, String>> {
        self.logger.flush();
        self.take_lines()
            .into_iter()
            .map(|l| Record::parse(&l).ok_or(l))
            .collect()
    }

    fn take_lines(&self) -> Vec<String> {
        self.lines
            .0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

fn f_off() -> TraceFilter {
    Filter::default().value(0)
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.on.is_some() {
            let _ = self.stop();
        }
    }
}

/// One traced packet: its header as it arrived and what the program did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub tcp_flags: u8,
    /// The service id, if a service matched.
    pub service: Option<u32>,
    /// `MODE_DSR` / `MODE_NAT`, with `service`.
    pub mode: u8,
    /// `TRACE_FLOW_*`: how the backend was found.
    pub flow: u8,
    /// The Maglev slot of a new flow.
    pub slot: u32,
    /// The backend the verdict names, with its address and port.
    pub backend: Option<(u32, IpAddr, u16)>,
    /// XDP action (XDP_DROP 1, XDP_PASS 2, XDP_TX 3, XDP_REDIRECT 4).
    pub action: u32,
    pub reason: Option<Reason>,
}

impl Record {
    /// Parses the program's record text (`key=value` fields, vip-ebpf
    /// `trace::emit`). `None` for anything else.
    pub fn parse(line: &str) -> Option<Record> {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
        };
        let num = |k: &str| -> Option<u64> { field(k)?.parse().ok() };
        let family = num("family")? as u8;
        // Addresses come in their 16-byte form, formatted as IPv6; an IPv4
        // address is its first 4 bytes (vip-common `AddrBytes`).
        let addr = |k: &str| -> Option<IpAddr> {
            let v6: Ipv6Addr = field(k)?.parse().ok()?;
            Some(match family {
                FAMILY_V4 => {
                    let o = v6.octets();
                    IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
                }
                FAMILY_V6 => IpAddr::V6(v6),
                _ => return None,
            })
        };
        let service = num("service")? as u32;
        let backend = num("backend")? as u32;
        Some(Record {
            proto: num("proto")? as u8,
            src: addr("src")?,
            sport: num("sport")? as u16,
            dst: addr("dst")?,
            dport: num("dport")? as u16,
            tcp_flags: u8::from_str_radix(field("tcp_flags")?, 16).ok()?,
            service: (service != u32::MAX).then_some(service),
            mode: num("mode")? as u8,
            flow: num("flow")? as u8,
            slot: num("slot")? as u32,
            backend: (backend != u32::MAX)
                .then(|| Some((backend, addr("backend_addr")?, num("backend_port")? as u16)))
                .flatten(),
            action: num("action")? as u32,
            reason: Reason::from_index(num("reason")? as u32),
        })
    }

    pub fn proto_name(&self) -> String {
        match self.proto {
            vip_common::PROTO_TCP => "tcp".into(),
            vip_common::PROTO_UDP => "udp".into(),
            p => p.to_string(),
        }
    }

    /// The XDP action's name (include/uapi/linux/bpf.h `enum xdp_action`).
    pub fn action_name(&self) -> &'static str {
        match self.action {
            0 => "aborted",
            1 => "drop",
            2 => "pass",
            3 => "tx",
            4 => "redirect",
            _ => "unknown",
        }
    }

    pub fn mode_name(&self) -> Option<&'static str> {
        match (self.service, self.mode) {
            (None, _) => None,
            (_, MODE_DSR) => Some("dsr"),
            (_, MODE_NAT) => Some("nat"),
            _ => Some("unknown"),
        }
    }

    pub fn flow_name(&self) -> Option<&'static str> {
        match self.flow {
            TRACE_FLOW_ESTABLISHED => Some("established"),
            TRACE_FLOW_NEW => Some("new"),
            TRACE_FLOW_REPLY => Some("reply"),
            _ => None,
        }
    }

    pub fn reason_label(&self) -> &'static str {
        self.reason.map_or("unknown", Reason::label)
    }

    /// TCP flags as tcpdump writes them (S, F, R, P, . for ACK).
    fn flags_text(&self) -> String {
        if self.proto != vip_common::PROTO_TCP {
            return String::new();
        }
        let mut s = String::new();
        for (bit, c) in [
            (0x02, 'S'),
            (0x01, 'F'),
            (0x04, 'R'),
            (0x08, 'P'),
            (0x10, '.'),
        ] {
            if self.tcp_flags & bit != 0 {
                s.push(c);
            }
        }
        format!(" [{s}]")
    }

    /// One line, like
    /// `10.0.0.2:40000 > 10.0.0.100:6443 tcp [S] service 0 dsr, new flow (slot 812), backend 1 10.0.1.2:6443: tx tx_dsr`.
    pub fn text(&self) -> String {
        let ep = |a: IpAddr, p: u16| match a {
            IpAddr::V4(_) => format!("{a}:{p}"),
            IpAddr::V6(_) => format!("[{a}]:{p}"),
        };
        let mut s = format!(
            "{} > {} {}{}",
            ep(self.src, self.sport),
            ep(self.dst, self.dport),
            self.proto_name(),
            self.flags_text()
        );
        if let (Some(id), Some(mode)) = (self.service, self.mode_name()) {
            let _ = write!(s, " service {id} {mode}");
        }
        match self.flow_name() {
            Some("new") => {
                let _ = write!(s, ", new flow (slot {})", self.slot);
            }
            Some(f) => {
                let _ = write!(s, ", {f} flow");
            }
            None => {}
        }
        if let Some((id, a, p)) = self.backend {
            let _ = write!(s, ", backend {id} {}", ep(a, p));
        }
        let _ = write!(s, ": {} {}", self.action_name(), self.reason_label());
        s
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "proto": self.proto_name(),
            "src": self.src.to_string(),
            "sport": self.sport,
            "dst": self.dst.to_string(),
            "dport": self.dport,
            "tcp_flags": self.tcp_flags,
            "service": self.service,
            "mode": self.mode_name(),
            "flow": self.flow_name(),
            "slot": (self.flow == TRACE_FLOW_NEW).then_some(self.slot),
            "backend": self.backend.map(|(id, ..)| id),
            "backend_addr": self.backend.map(|(_, a, _)| a.to_string()),
            "backend_port": self.backend.map(|(.., p)| p),
            "action": self.action_name(),
            "reason": self.reason_label(),
        })
    }
}

/// `vipd trace`'s settings.
pub struct Options {
    pub iface: String,
    pub filter: Filter,
    /// Stop after this long (else at Ctrl-C / SIGTERM).
    pub duration: Option<std::time::Duration>,
    pub json: bool,
}

impl std::os::fd::AsRawFd for Tracer {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd().as_raw_fd()
    }
}

/// Traces until `duration`, Ctrl-C or SIGTERM, printing one line per
/// record to `out`; switches tracing off on every way out (a write error,
/// such as a closed pipe, included). Returns the number of records.
pub async fn follow(o: &Options, out: &mut dyn std::io::Write) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use tokio::io::{Interest, unix::AsyncFd};
    use tokio::signal::unix::{SignalKind, signal};

    let mut tracer = Tracer::for_interface(&o.iface)?;
    tracer.start(o.filter)?;
    let what = match (o.filter.addr, o.filter.port) {
        (Some(a), Some(p)) => format!("address {a}, port {p}"),
        (Some(a), None) => format!("address {a}"),
        (None, Some(p)) => format!("port {p}"),
        (None, None) => "every packet".to_owned(),
    };
    eprintln!(
        "vipd trace: program {} on {}, {what}{}; Ctrl-C stops",
        tracer.program_id(),
        o.iface,
        o.duration
            .map(|d| format!(", for {d:?}"))
            .unwrap_or_default()
    );
    // SAFETY: the logger owns the ring's map fd, which stays open and the
    // same for as long as the Tracer lives inside the AsyncFd, and
    // `as_raw_fd` always returns it (as sync's ring does).
    let mut fd = unsafe { AsyncFd::register_with_interest(tracer, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the trace ring: {}", e.into_parts().1))?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let deadline = o.duration.map(|d| tokio::time::Instant::now() + d);
    let mut renew = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut n = 0u64;
    let mut print = |t: &mut Tracer, out: &mut dyn std::io::Write| -> anyhow::Result<()> {
        for r in t.records() {
            let line = match (r, o.json) {
                (Ok(r), true) => r.json().to_string(),
                (Ok(r), false) => r.text(),
                // Not one of ours: shown as it came, never dropped.
                (Err(raw), _) => raw,
            };
            writeln!(out, "{line}").context("writing a record")?;
            n += 1;
        }
        out.flush().context("writing a record")?;
        Ok(())
    };
    let res: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return Ok(()),
                _ = renew.tick() => fd.get_mut().renew()?,
                g = fd.readable_mut() => {
                    let mut g = g.context("waiting for records")?;
                    print(g.get_inner_mut(), out)?;
                    g.clear_ready();
                }
            }
        }
    }
    .await;
    let mut tracer = fd.into_inner();
    let stopped = tracer.stop();
    // Records written before the switch went off.
    let last = print(&mut tracer, out);
    res?;
    stopped?;
    last?;
    eprintln!("vipd trace: {n} records; tracing is off");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4_NEW: &str = "family=4 proto=6 src=a00:2:: sport=40000 dst=a00:64:: dport=6443 tcp_flags=2 service=0 mode=1 flow=2 slot=812 backend=1 backend_addr=a00:102:: backend_port=6443 action=3 reason=7";

    #[test]
    fn parses_and_renders_a_v4_record() {
        let r = Record::parse(V4_NEW).expect("parses");
        assert_eq!(r.src, "10.0.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.dst, "10.0.0.100".parse::<IpAddr>().expect("ip"));
        assert_eq!(r.reason, Some(Reason::TxDsr));
        assert_eq!(
            r.text(),
            "10.0.0.2:40000 > 10.0.0.100:6443 tcp [S] service 0 dsr, new flow (slot 812), backend 1 10.0.1.2:6443: tx tx_dsr"
        );
        let j = r.json();
        assert_eq!(j["reason"], "tx_dsr");
        assert_eq!(j["backend_addr"], "10.0.1.2");
        assert_eq!(j["flow"], "new");
    }

    #[test]
    fn parses_a_v6_record_without_service_or_backend() {
        let r = Record::parse(
            "family=6 proto=17 src=fd00::2 sport=5353 dst=fd00::64 dport=53 tcp_flags=0 service=4294967295 mode=0 flow=0 slot=0 backend=4294967295 backend_addr=:: backend_port=0 action=2 reason=2",
        )
        .expect("parses");
        assert_eq!(r.service, None);
        assert_eq!(r.backend, None);
        assert_eq!(
            r.text(),
            "[fd00::2]:5353 > [fd00::64]:53 udp: pass pass_no_service"
        );
    }

    #[test]
    fn other_text_is_not_a_record() {
        assert_eq!(Record::parse("hello"), None);
        assert_eq!(Record::parse(&V4_NEW.replace("family=4", "family=9")), None);
    }

    #[test]
    fn filter_values() {
        let f = Filter {
            addr: Some("10.0.0.2".parse().expect("ip")),
            port: Some(6443),
        };
        let v = f.value(7);
        assert_eq!(v.until_ns, 7);
        assert_eq!(v.flags, TRACE_F_ADDR | TRACE_F_PORT);
        assert_eq!(v.family, FAMILY_V4);
        assert_eq!(&v.addr[..4], &[10, 0, 0, 2]);
        assert_eq!(v.port_be, 6443u16.to_be());
        assert_eq!(Filter::default().value(0).flags, 0);
    }
}

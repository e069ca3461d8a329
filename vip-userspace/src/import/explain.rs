//! Why each setting is not carried over, and the comment that says so. One
//! place, so that the comments and the README say the same.

use std::fmt::Display;

pub(super) mod why {
    pub const STATE: &str = "VRRPv3 (RFC 9568 6.4.1) starts every node but the address owner as Backup and lets the priority decide who becomes Master";
    pub const AUTH: &str = "VRRPv3 (RFC 9568) has no authentication: it was removed because it protected nothing; keep VRRP on a trusted segment, or use unicast_peers, whose sources alone vipd accepts";
    pub const ROUTER_ID: &str =
        "names this node in keepalived's logs and mails; vipd has no equivalent";
    pub const GLOBAL: &str = "a keepalived process setting; vipd has no equivalent";
    pub const NOTIFY: &str = "vipd runs no scripts on state changes; watch vipd_vrrp_state on /metrics or vipd's log instead";
    pub const TRACK_INTERFACE: &str = "vipd tracks the link of its own interface only (link down releases the VIP); other interfaces are not watched";
    pub const TRACK_OTHER: &str = "vipd tracks only its XDP program and this node's apiserver";
    pub const SCRIPT: &str = "vipd probes this node's own apiserver itself (the backend with one of its addresses) and lowers its priority by track.local_apiserver while the probe fails";
    pub const SCRIPT_TIMING: &str = "the local apiserver is tracked with its probe's timing (services[].probe interval, fall, rise)";
    pub const SRC_IP: &str = "vipd sends from the interface's own address; this address was used only to find which server is this node";
    pub const VIP_OPTIONS: &str = "vipd adds each VIP to `interface` as a /32 or /128 host address, without prefix, dev, label or scope";
    pub const VIP_LINK_LOCAL: &str = "a link-local VIP: vipd advertises from the interface's own link-local address and balances routable VIPs only";
    pub const VIP_NO_BACKEND: &str =
        "no backend of this address family; vipd holds only the VIPs it balances";
    pub const EXCLUDED: &str =
        "its addresses are imported as ordinary VIPs: vipd lists every VIP in its advertisements";
    pub const SECOND_INSTANCE: &str = "vipd runs one election for all VIPs, with the first vrrp_instance's settings; only this instance's VIPs are imported";
    pub const UNTRACKED_SCRIPT: &str = "no imported vrrp_instance tracks it";
    pub const NO_SCRIPT: &str = "there is no vrrp_script of that name";
    pub const SYNC_GROUP: &str = "vipd runs one virtual router per address family on one interface; there is nothing to group";
    pub const LVS: &str =
        "keepalived's IPVS virtual servers are not read; the backends come from haproxy.cfg";
    pub const INCLUDE: &str =
        "vipd import reads one file; import the included settings by concatenating the files";
    pub const GARP_OTHER: &str = "vipd announces `vrrp.announce.count` times, `announce.interval` apart, and refreshes every `announce.refresh`";
    pub const VMAC: &str =
        "vipd answers for the VIP with the interface's own MAC, not a VRRP virtual MAC";
    pub const VERSION2: &str = "vipd speaks VRRPv3 (RFC 9568) only; keepalived nodes left on this VRID during the move must run `vrrp_version 3`, or the two will not hear each other";
    pub const ADVERT_ROUNDED: &str = "VRRPv3 carries the interval in centiseconds, 20ms..40950ms";
    pub const PEER_FAMILY: &str = "no VIP of this address family to elect a holder for";
    pub const PEER_NOT_LINK_LOCAL: &str = "not link-local: vipd sends IPv6 adverts from the link-local address (RFC 9568 5.1.2.1) and accepts a unicast peer by its link-local source; list that node's fe80:: address in vrrp.unicast_peers";
    pub const PEER_OPTION: &str = "vipd checks TTL 255 on every advert (RFC 9568 7.1)";
    pub const GENERIC: &str = "vipd has no equivalent";

    pub const HA_PROCESS: &str = "an HAProxy process setting; vipd has no equivalent";
    pub const LOG: &str = "vipd logs backend state changes, not connections; per-backend packets, flows and RSTs are on /metrics";
    pub const STATS: &str = "vipd serves its counters on /metrics (`metrics_listen`)";
    pub const TIMEOUT: &str = "vipd forwards packets and holds no proxied connections, so nothing times out but idle flows in its connection table (mode nat: nat.tcp_idle_s)";
    pub const BALANCE: &str = "vipd spreads new flows with a Maglev table that is the same on every node, so flows keep their apiserver when the VIP moves";
    pub const RETRY: &str = "no proxy retries: a flow whose backend died gets a TCP RST at once and the client reconnects to a live apiserver";
    pub const MAXCONN: &str = "vipd forwards packets; it neither caps nor queues connections";
    pub const READYZ: &str = "vipd probes /readyz: it turns red as soon as the apiserver starts shutting down (--shutdown-delay-duration), so new flows stop while it still serves";
    pub const HTTP_MODE: &str =
        "vipd balances TCP without looking inside; HTTP-mode settings have nothing to act on";
    pub const MODE_HTTP_DEFAULTS: &str =
        "vipd balances TCP; the sections it imports run in mode tcp";
    pub const ACL: &str =
        "vipd balances TCP without looking inside; it has no ACLs or request rules";
    pub const USE_BACKEND: &str = "conditional routing; only default_backend is imported";
    pub const SECTION_HTTP: &str = "the whole section: it runs in mode http, and vipd balances TCP";
    pub const SECTION_UNUSED: &str = "the whole section: no imported frontend uses it";
    pub const SECTION_OTHER: &str = "the whole section: vipd has no equivalent";
    pub const BIND_OPTION: &str =
        "vipd serves the VIP on its interface, without TLS termination or socket options";
    pub const BIND_SKIPPED: &str =
        "not an IP address with one port; vipd serves one port per service";
    pub const BIND_NOT_VIP: &str = "not a VIP; vipd balances VIPs only";
    pub const WEIGHT: &str = "Maglev gives every backend an equal share of new flows";
    pub const SLOWSTART: &str = "a backend that comes up gets its full share of new flows at once";
    pub const BACKUP: &str = "vipd has no backup servers: this one is an ordinary backend here";
    pub const DISABLED: &str = "a disabled server is not imported";
    pub const CHECK_INTERVALS: &str = "vipd probes at one interval whatever the backend's state";
    pub const CHECK_PORT: &str = "vipd probes the port it forwards to";
    pub const PROXY_PROTOCOL: &str = "vipd forwards packets unchanged; there is no PROXY header";
    pub const RESOLVE: &str = "vipd's backends are fixed IP addresses";
    pub const CLIENT_CERT: &str = "vipd's probe presents probe.client_cert and probe.client_key (two files) where anonymous /readyz is off";
    pub const TRAFFIC_TLS: &str =
        "vipd forwards the client's own TLS untouched; it opens no TLS to the backends for traffic";
    pub const EXPECT: &str =
        "vipd expects 200; 401/403 count as \"auth misconfigured\", anything else as down";
    pub const CHECK_OTHER: &str = "vipd's probe is a GET of probe.path over TLS";
    pub const PROBE_ALIKE: &str =
        "vipd probes every backend of a service alike, as the first server says";
}

/// A setting not carried over: where it was and why it goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Skip {
    pub(super) line: usize,
    pub(super) text: String,
    pub(super) why: &'static str,
}

impl Skip {
    pub(super) fn new(line: usize, text: impl Into<String>, why: &'static str) -> Self {
        Skip {
            line,
            text: text.into(),
            why,
        }
    }
}

/// The comment for a setting not carried over (without the `# `), as
/// [`Imported::not_carried_over`] counts them.
pub(super) fn not_carried(
    file: &str,
    line: usize,
    text: impl Display,
    why: impl Display,
) -> String {
    format!("not carried over: {file}:{line}: {text} ({why})")
}

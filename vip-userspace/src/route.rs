//! The VIP's host route in a kernel table of vipd's own: how vipd holds a VIP
//! across an L3 fabric (DESIGN.md, "Third shape"). vipd installs the /32 or
//! /128 while the node can serve and withdraws it when it cannot; the node's
//! routing daemon (BIRD's `protocol kernel { kernel table 198; learn; }`, FRR's
//! `ip import-table 198`) carries it over BGP, with BFD, to the upstream
//! router, which spreads clients over every LB that announces it (ECMP). vipd
//! never speaks BGP.
//!
//! The route is a `blackhole` in table [`DEFAULT_TABLE`] with vipd's own
//! protocol number [`DEFAULT_PROTO`]:
//! - The table is a mailbox for the routing daemon, not a forwarding table: no
//!   `ip rule` looks it up, and the VIP itself is served by the XDP program or
//!   a local address. A blackhole needs no interface, so the kernel never
//!   flushes it behind vipd's back (a `unicast dev X` route goes when X goes
//!   down), and `ip route show table 198` reads as what it is.
//! - BIRD's `learn` imports every route whose protocol is not `kernel` (2,
//!   only with `learn all`) nor `bird` (12, its own echo); any other number
//!   is an "alien" route (BIRD 2 sysdep/linux/netlink.c, nl_parse_route), and
//!   `blackhole` is one of the types it imports.
//! - The protocol number says who installed a route: vipd withdraws only its
//!   own (the kernel's RTM_DELROUTE matches `rtm_protocol` when it is set) and
//!   reports anyone else's route for a VIP instead of touching it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use thiserror::Error;

/// The kernel table vipd announces into by default (any of 1..=252 other than
/// 253 default, 254 main, 255 local will do; the routing daemon's config names
/// the same number).
pub const DEFAULT_TABLE: u32 = 198;

/// vipd's route protocol number (`rtm_protocol`, `ip route ... proto 249`).
/// Not one of iproute2's /etc/iproute2/rt_protos names (0-18, 42, 99,
/// 186-192) nor one FRR's zebra keeps for itself (186-198, zebra/rt_netlink.h),
/// so a route with it is vipd's and nobody else's.
pub const DEFAULT_PROTO: u8 = 249;

const RT_TABLE_DEFAULT: u32 = 253;
const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_LOCAL: u32 = 255;

/// Where vipd's routes go and how they are marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteTable {
    pub table: u32,
    pub proto: u8,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            table: DEFAULT_TABLE,
            proto: DEFAULT_PROTO,
        }
    }
}

impl RouteTable {
    /// Refuses the tables the host routes with and the protocol numbers the
    /// kernel and BIRD treat specially (see the module comment).
    pub fn new(table: u32, proto: u8) -> Result<RouteTable, RouteError> {
        if table == 0 || matches!(table, RT_TABLE_DEFAULT | RT_TABLE_MAIN | RT_TABLE_LOCAL) {
            return Err(RouteError::Table { table });
        }
        // 0 unspec, 1 redirect, 2 kernel, 3 boot, 4 static (`ip route add`'s
        // default), 12 bird: each means something else to the kernel, to
        // iproute2 or to BIRD's `learn`.
        if proto <= 4 || proto == 12 {
            return Err(RouteError::Proto { proto });
        }
        Ok(RouteTable { table, proto })
    }
}

/// A route's type, as far as the table view cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
    Other(u8),
}

impl From<RouteType> for RouteKind {
    fn from(t: RouteType) -> Self {
        match t {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            RouteType::Unreachable => RouteKind::Unreachable,
            RouteType::Prohibit => RouteKind::Prohibit,
            other => RouteKind::Other(other.into()),
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteKind::Unicast => f.write_str("unicast"),
            RouteKind::Blackhole => f.write_str("blackhole"),
            RouteKind::Unreachable => f.write_str("unreachable"),
            RouteKind::Prohibit => f.write_str("prohibit"),
            RouteKind::Other(n) => write!(f, "type {n}"),
        }
    }
}

/// One route read back from the kernel: only what classification needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRoute {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub table: u32,
    pub proto: u8,
    pub kind: RouteKind,
}

impl TableRoute {
    /// A /32 or /128: a single address, as vipd installs.
    pub fn is_host(&self) -> bool {
        self.prefix_len == host_len(self.dst)
    }

    /// The route for `vip` alone (not a covering prefix).
    pub fn is_for(&self, vip: IpAddr) -> bool {
        self.is_host() && self.dst == vip
    }
}

impl fmt::Display for TableRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} table {} proto {}",
            self.kind, self.dst, self.prefix_len, self.table, self.proto
        )
    }
}

fn host_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Who holds a VIP's route in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    /// No host route for the VIP.
    Nobody,
    /// vipd's own route (its proto, a blackhole host route).
    Vipd,
    /// Someone else's host route for the VIP: another agent or an operator's
    /// `ip route add`. vipd neither replaces nor removes it.
    Foreign(TableRoute),
}

/// The announce table split into what vipd installed and everything else.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableView {
    /// vipd's host routes: the VIPs it currently announces.
    pub ours: Vec<IpAddr>,
    /// Every other route in the table (foreign VIP routes, and routes that
    /// have no business there, whoever put them).
    pub foreign: Vec<TableRoute>,
}

impl TableView {
    /// Splits the routes of `table.table` (routes of other tables are
    /// ignored) into vipd's and foreign. vipd's are exactly what it installs:
    /// its proto, a host prefix, a blackhole. A route with vipd's proto but
    /// any other shape was not made by vipd and is foreign.
    pub fn classify(table: RouteTable, routes: &[TableRoute]) -> TableView {
        let mut view = TableView::default();
        for r in routes.iter().filter(|r| r.table == table.table) {
            if r.proto == table.proto && r.is_host() && r.kind == RouteKind::Blackhole {
                view.ours.push(r.dst);
            } else {
                view.foreign.push(*r);
            }
        }
        view.ours.sort();
        view.ours.dedup();
        view
    }

    pub fn holder(&self, vip: IpAddr) -> Holder {
        if let Some(r) = self.foreign.iter().find(|r| r.is_for(vip)) {
            return Holder::Foreign(*r);
        }
        if self.ours.contains(&vip) {
            Holder::Vipd
        } else {
            Holder::Nobody
        }
    }

    /// What makes the table announce exactly `wanted` (desired state in,
    /// difference out): VIPs to announce, vipd routes to withdraw (including
    /// ones a previous run left behind), and wanted VIPs someone else's route
    /// already holds, which vipd reports and leaves alone.
    pub fn plan(&self, wanted: &[IpAddr]) -> Plan {
        let mut plan = Plan::default();
        for &vip in wanted {
            match self.holder(vip) {
                Holder::Nobody => plan.announce.push(vip),
                Holder::Vipd => {}
                Holder::Foreign(route) => plan.blocked.push(route),
            }
        }
        plan.withdraw = self
            .ours
            .iter()
            .filter(|v| !wanted.contains(v))
            .copied()
            .collect();
        plan
    }
}

/// The difference between the table and the wanted VIPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub announce: Vec<IpAddr>,
    pub withdraw: Vec<IpAddr>,
    /// The foreign host routes that hold wanted VIPs.
    pub blocked: Vec<TableRoute>,
}

/// A route message from a dump, reduced to a [`TableRoute`]; `None` for
/// what the table view has no use for (no destination: default routes;
/// MPLS and other families).
pub fn table_route(msg: &RouteMessage) -> Option<TableRoute> {
    let h = &msg.header;
    let mut table = u32::from(h.table);
    let mut dst = None;
    for a in &msg.attributes {
        match a {
            // RTA_TABLE carries ids above 255; the header field then says
            // RT_TABLE_COMPAT.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
            _ => {}
        }
    }
    let dst = match (dst, h.address_family) {
        (Some(d), _) => d,
        // A default route carries no RTA_DST.
        (None, AddressFamily::Inet) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, AddressFamily::Inet6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        (None, _) => return None,
    };
    Some(TableRoute {
        dst,
        prefix_len: h.destination_prefix_length,
        table,
        proto: h.protocol.into(),
        kind: h.kind.into(),
    })
}

/// The blackhole host route for `vip` in `t`, as vipd adds and deletes it.
pub fn vip_route(t: RouteTable, vip: IpAddr) -> RouteMessage {
    let proto = RouteProtocol::from(t.proto);
    match vip {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .table_id(t.table)
            .protocol(proto)
            .kind(RouteType::BlackHole)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .table_id(t.table)
            .protocol(proto)
            .kind(RouteType::BlackHole)
            .build(),
    }
}

#[derive(Debug, Error)]
pub enum RouteError {
    #[error(
        "table {table} is one the host routes with (0, 253 default, 254 main, 255 local); \
         give vipd a table of its own (e.g. {DEFAULT_TABLE}) and name it in the routing daemon's config"
    )]
    Table { table: u32 },
    #[error(
        "route protocol {proto} means something else to the kernel, iproute2 or BIRD \
         (0-4 are the kernel's, 12 is BIRD's own, which its `learn` skips); use another (default {DEFAULT_PROTO})"
    )]
    Proto { proto: u8 },
    #[error("opening a NETLINK_ROUTE socket failed: {source}")]
    Socket {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel refused to add {vip} to table {table}: {source}{}",
        hint(source)
    )]
    Add {
        vip: IpAddr,
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "{vip} already has a route in table {table} that vipd did not install ({route}); vipd leaves it \
         alone and does not announce {vip}: remove it (`ip route del {vip} table {table} proto {}`) \
         or give vipd a table of its own",
        route.proto
    )]
    Occupied {
        vip: IpAddr,
        table: u32,
        route: TableRoute,
    },
    #[error(
        "the kernel refused to delete {vip} from table {table}: {source}{}",
        hint(source)
    )]
    Delete {
        vip: IpAddr,
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("reading the kernel's routes back failed: {source}{}", hint(source))]
    Dump {
        #[source]
        source: rtnetlink::Error,
    },
}

/// The errno of a kernel NACK.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

fn hint(e: &rtnetlink::Error) -> &'static str {
    match errno(e) {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (vipd needs CAP_NET_ADMIN in the node's network namespace to change routes)"
        }
        Some(libc::EAFNOSUPPORT) => " (IPv6 is disabled on this host)",
        _ => "",
    }
}

/// What `announce` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    Added,
    /// vipd's route was already there (a restart, or a repeated call).
    AlreadyThere,
}

/// Installs and withdraws VIP host routes in one table, over a netlink socket
/// of the network namespace it was created in. Needs CAP_NET_ADMIN to change
/// routes (reading them back does not).
pub struct RouteAnnouncer {
    handle: Handle,
    table: RouteTable,
    conn: tokio::task::JoinHandle<()>,
}

impl RouteAnnouncer {
    /// Opens the socket (in the calling thread's network namespace) and
    /// spawns its reader on the current tokio runtime: call it from inside
    /// one.
    pub fn new(table: RouteTable) -> Result<RouteAnnouncer, RouteError> {
        let (conn, handle, _events) =
            rtnetlink::new_connection().map_err(|source| RouteError::Socket { source })?;
        Ok(RouteAnnouncer {
            handle,
            table,
            conn: tokio::spawn(conn),
        })
    }

    pub fn table(&self) -> RouteTable {
        self.table
    }

    /// Installs vipd's route for `vip`. Idempotent; never replaces someone
    /// else's route for the VIP (`RouteError::Occupied` names it).
    pub async fn announce(&self, vip: IpAddr) -> Result<Announced, RouteError> {
        let t = self.table;
        // Without NLM_F_REPLACE: the kernel refuses (EEXIST) rather than
        // overwrite a route for the same prefix, whoever installed it.
        let added = self.handle.route().add(vip_route(t, vip)).execute().await;
        match added {
            Ok(()) => Ok(Announced::Added),
            Err(e) if errno(&e) == Some(libc::EEXIST) => match self.list().await?.holder(vip) {
                Holder::Vipd => Ok(Announced::AlreadyThere),
                Holder::Foreign(route) => Err(RouteError::Occupied {
                    vip,
                    table: t.table,
                    route,
                }),
                // Gone between the two calls: report the original refusal.
                Holder::Nobody => Err(RouteError::Add {
                    vip,
                    table: t.table,
                    source: e,
                }),
            },
            Err(source) => Err(RouteError::Add {
                vip,
                table: t.table,
                source,
            }),
        }
    }

    /// Removes vipd's route for `vip`; `Ok(false)` if it had none. The
    /// request names vipd's proto and type, and the kernel deletes only a
    /// route that matches them, so a foreign route for the VIP stays.
    pub async fn withdraw(&self, vip: IpAddr) -> Result<bool, RouteError> {
        let t = self.table;
        match self.handle.route().del(vip_route(t, vip)).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::ESRCH) || errno(&e) == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(source) => Err(RouteError::Delete {
                vip,
                table: t.table,
                source,
            }),
        }
    }

    /// Reads the table back (IPv4 and IPv6) and classifies it.
    pub async fn list(&self) -> Result<TableView, RouteError> {
        let mut routes = Vec::new();
        for family in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            // Without strict checking the kernel dumps every table; the
            // filter is ours (table_route + classify).
            let mut dump = self.handle.route().get(family).execute();
            loop {
                match dump.try_next().await {
                    Ok(Some(msg)) => routes.extend(table_route(&msg)),
                    Ok(None) => break,
                    // A host without IPv6 answers the IPv6 dump with this.
                    Err(e) if errno(&e) == Some(libc::EAFNOSUPPORT) => break,
                    Err(source) => return Err(RouteError::Dump { source }),
                }
            }
        }
        Ok(TableView::classify(self.table, &routes))
    }
}

impl Drop for RouteAnnouncer {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// For each address, the interface the kernel would send to it through
/// (`ip route get ADDR`, an RTM_GETROUTE with a destination and no dump
/// flag), by name. Addresses without a route, or a failed lookup, are
/// left out: the caller decides what a missing route means. Opens its own
/// netlink socket in the calling thread's network namespace.
pub async fn route_interfaces(addrs: &[IpAddr]) -> Vec<(IpAddr, String)> {
    let Ok((conn, handle, _events)) = rtnetlink::new_connection() else {
        return Vec::new();
    };
    let conn = tokio::spawn(conn);
    use network_interface::{NetworkInterface, NetworkInterfaceConfig};
    let names: Vec<(u32, String)> = NetworkInterface::show()
        .map(|v| v.into_iter().map(|i| (i.index, i.name)).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for &a in addrs {
        let host = if a.is_ipv4() { 32 } else { 128 };
        let Ok(b) = RouteMessageBuilder::<IpAddr>::new().destination_prefix(a, host) else {
            continue;
        };
        let mut replies = handle.route().get(b.build()).execute();
        while let Ok(Some(msg)) = replies.try_next().await {
            let oif = msg.attributes.iter().find_map(|at| match at {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if let Some(name) = oif.and_then(|i| names.iter().find(|(n, _)| *n == i)) {
                out.push((a, name.1.clone()));
            }
        }
    }
    conn.abort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn route(dst: &str, len: u8, table: u32, proto: u8, kind: RouteKind) -> TableRoute {
        TableRoute {
            dst: ip(dst),
            prefix_len: len,
            table,
            proto,
            kind,
        }
    }

    const T: RouteTable = RouteTable {
        table: DEFAULT_TABLE,
        proto: DEFAULT_PROTO,
    };

    #[test]
    fn classification_table() {
        use RouteKind::*;
        struct Case {
            desc: &'static str,
            route: TableRoute,
            ours: bool,
        }
        let cases = [
            Case {
                desc: "vipd's IPv4 blackhole host route",
                route: route("192.0.2.10", 32, 198, 249, Blackhole),
                ours: true,
            },
            Case {
                desc: "vipd's IPv6 blackhole host route",
                route: route("2001:db8::10", 128, 198, 249, Blackhole),
                ours: true,
            },
            Case {
                desc: "an operator's `ip route add` (proto static) for the VIP",
                route: route("192.0.2.10", 32, 198, 4, Blackhole),
                ours: false,
            },
            Case {
                desc: "vipd's proto on a unicast route: vipd never installs one",
                route: route("192.0.2.10", 32, 198, 249, Unicast),
                ours: false,
            },
            Case {
                desc: "vipd's proto on a covering prefix",
                route: route("192.0.2.0", 24, 198, 249, Blackhole),
                ours: false,
            },
            Case {
                desc: "a /32 in IPv6 is not a host route",
                route: route("2001:db8::", 32, 198, 249, Blackhole),
                ours: false,
            },
        ];
        for c in &cases {
            let view = TableView::classify(T, &[c.route]);
            assert_eq!(view.ours.contains(&c.route.dst), c.ours, "{}", c.desc);
            assert_eq!(view.foreign.contains(&c.route), !c.ours, "{}", c.desc);
        }
    }

    #[test]
    fn other_tables_are_not_looked_at() {
        let view = TableView::classify(
            T,
            &[
                route("192.0.2.10", 32, 254, 249, RouteKind::Blackhole),
                route("10.0.0.0", 8, 254, 2, RouteKind::Unicast),
            ],
        );
        assert_eq!(view, TableView::default());
    }

    #[test]
    fn a_foreign_route_for_the_vip_wins_over_ours() {
        // Both at once can happen at different metrics: vipd reports the
        // foreign one rather than claiming the VIP.
        let view = TableView::classify(
            T,
            &[
                route("192.0.2.10", 32, 198, 249, RouteKind::Blackhole),
                route("192.0.2.10", 32, 198, 4, RouteKind::Unicast),
            ],
        );
        assert_eq!(
            view.holder(ip("192.0.2.10")),
            Holder::Foreign(route("192.0.2.10", 32, 198, 4, RouteKind::Unicast))
        );
        assert_eq!(view.holder(ip("192.0.2.11")), Holder::Nobody);
    }

    #[test]
    fn plan_announces_withdraws_and_reports() {
        let view = TableView::classify(
            T,
            &[
                // announced and still wanted
                route("192.0.2.10", 32, 198, 249, RouteKind::Blackhole),
                // left by a previous run, no longer wanted
                route("192.0.2.99", 32, 198, 249, RouteKind::Blackhole),
                // someone else's route for a wanted VIP
                route("2001:db8::10", 128, 198, 188, RouteKind::Unicast),
                // someone else's route for a VIP vipd does not want
                route("192.0.2.50", 32, 198, 4, RouteKind::Blackhole),
            ],
        );
        let plan = view.plan(&[ip("192.0.2.10"), ip("192.0.2.11"), ip("2001:db8::10")]);
        assert_eq!(plan.announce, vec![ip("192.0.2.11")]);
        assert_eq!(plan.withdraw, vec![ip("192.0.2.99")], "never 192.0.2.50");
        assert_eq!(plan.blocked.len(), 1);
        assert_eq!(plan.blocked[0].dst, ip("2001:db8::10"));
        assert_eq!(plan.blocked[0].proto, 188);
    }

    #[test]
    fn messages_round_trip_through_the_view() {
        for vip in [ip("192.0.2.10"), ip("2001:db8::10")] {
            let msg = vip_route(T, vip);
            let r = table_route(&msg).expect("a route with a destination");
            assert_eq!(
                r,
                route(
                    &vip.to_string(),
                    host_len(vip),
                    198,
                    249,
                    RouteKind::Blackhole
                )
            );
            assert_eq!(TableView::classify(T, &[r]).holder(vip), Holder::Vipd);
        }
        // Tables above 255 travel in RTA_TABLE.
        let big = RouteTable::new(1000, 249).expect("valid");
        let r = table_route(&vip_route(big, ip("192.0.2.10"))).expect("route");
        assert_eq!(r.table, 1000);
    }

    #[test]
    fn tables_and_protos_that_mean_something_else_are_refused() {
        for table in [0, 253, 254, 255] {
            assert!(matches!(
                RouteTable::new(table, DEFAULT_PROTO),
                Err(RouteError::Table { .. })
            ));
        }
        for proto in [0, 2, 4, 12] {
            assert!(matches!(
                RouteTable::new(DEFAULT_TABLE, proto),
                Err(RouteError::Proto { .. })
            ));
        }
        assert_eq!(
            RouteTable::new(DEFAULT_TABLE, DEFAULT_PROTO).expect("valid"),
            RouteTable::default()
        );
    }

    /// `ip route get` through rtnetlink, unprivileged: the kernel routes
    /// loopback through `lo` in every namespace.
    #[tokio::test(flavor = "current_thread")]
    async fn the_kernel_names_the_interface_toward_an_address() {
        let got = route_interfaces(&[ip("127.0.0.1")]).await;
        assert_eq!(got, vec![(ip("127.0.0.1"), "lo".to_owned())]);
    }
}

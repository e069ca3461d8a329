//! Program tests for connection floods in mode dsr (issue 17 item 4): new
//! flows wait in `CT_UNCONFIRMED` until the client's next non-SYN packet
//! moves them to `CONNTRACK`, so a flood of SYNs or of lone segments evicts
//! no confirmed flow, and every flood packet is counted. Mode nat's rows are
//! in `datapath_nat.rs` (they need its namespace for the FIB).
//!
//! Needs root; run by `cargo xtask test`.

use std::net::IpAddr;

use vip_common::{MODE_DSR, PROTO_TCP, Reason, UNCONFIRMED_CAPACITY};
use vip_tests::{
    flood::{self, Counts},
    packet::{Pkt, TCP_ACK, TCP_PSH, TCP_RST, TCP_SYN, decode},
    progtest::{Dp, XDP_TX},
};
use vip_userspace::{config::addr_bytes, dataplane::programmer::DesiredBackend};

const PORT: u16 = 6443;
const VIP: &str = "10.77.0.100";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn backend(i: u8) -> DesiredBackend {
    let (family, addr) = addr_bytes(ip(&format!("10.77.0.{}", 20 + i)));
    DesiredBackend {
        family,
        addr,
        port_be: PORT.to_be(),
        mac: [0x02, 0x77, 0, 0, 0, 0x20 + i],
        local: false,
        encap: None,
        alive: true,
        draining: false,
    }
}

fn service(
    backends: impl IntoIterator<Item = u8>,
) -> vip_userspace::dataplane::programmer::DesiredService {
    vip_tests::progtest::service(
        ip(VIP),
        PORT,
        PROTO_TCP,
        MODE_DSR,
        [0; 16],
        backends.into_iter().map(backend).collect(),
    )
}

fn client(i: u16, flags: u8) -> Vec<u8> {
    Pkt::tcp(ip("10.77.0.10"), 30000 + i, ip(VIP), PORT, flags).build()
}

/// Sends `frame`, which must be forwarded (XDP_TX, `tx_dsr`); returns the
/// backend's MAC it went to.
fn sent_to(dp: &Dp, frame: &[u8]) -> [u8; 6] {
    let (action, out) = dp.run(frame, Reason::TxDsr);
    assert_eq!(action, XDP_TX, "forwarded");
    decode(&out).expect("decodes").dst_mac
}

/// (confirmed, unconfirmed) entries for client port `30000 + i`.
fn where_is(dp: &Dp, i: u16) -> (bool, bool) {
    let port = (30000 + i).to_be();
    let confirmed = dp.prog.maps().confirmed_flows().expect("CONNTRACK");
    let all = dp.prog.maps().conntrack().expect("both tables");
    let c = confirmed.iter().filter(|(k, _)| k.sport_be == port).count();
    let a = all.iter().filter(|(k, _)| k.sport_be == port).count();
    (c == 1, a - c == 1)
}

#[test]
fn new_flows_are_confirmed_by_the_clients_next_non_syn_packet() {
    let dp = Dp::new(&[service(1..=3)]);
    // A SYN: unconfirmed; its retransmission stays so, on the same backend.
    let be = sent_to(&dp, &client(0, TCP_SYN));
    assert_eq!(where_is(&dp, 0), (false, true), "a SYN waits unconfirmed");
    assert_eq!(sent_to(&dp, &client(0, TCP_SYN)), be, "retransmitted SYN");
    assert_eq!(where_is(&dp, 0), (false, true), "still unconfirmed");
    // The handshake's ACK moves it.
    assert_eq!(sent_to(&dp, &client(0, TCP_ACK)), be, "the ACK");
    assert_eq!(where_is(&dp, 0), (true, false), "confirmed by the ACK");
    // A flow picked up in the middle (after a VIP move): its first segment
    // waits, its second confirms it.
    let be = sent_to(&dp, &client(1, TCP_ACK | TCP_PSH));
    assert_eq!(where_is(&dp, 1), (false, true), "a lone segment waits");
    assert_eq!(sent_to(&dp, &client(1, TCP_ACK)), be, "second segment");
    assert_eq!(where_is(&dp, 1), (true, false), "confirmed by the second");
    // A SYN answered by an RST (a host whose address a flood spoofed,
    // refusing the backend's SYN-ACK): the RST goes to the same backend and
    // confirms nothing.
    let be = sent_to(&dp, &client(2, TCP_SYN));
    assert_eq!(sent_to(&dp, &client(2, TCP_RST)), be, "the RST follows");
    assert_eq!(where_is(&dp, 2), (false, true), "an RST does not confirm");
}

/// 200 confirmed flows, then the backend set changes (a fourth backend:
/// Maglev now sends some of them elsewhere, so only their `CONNTRACK`
/// entries keep them where they are), then a flood of more distinct SYNs
/// than `CT_UNCONFIRMED` holds and of lone segments, far more than the
/// 4096-entry `CONNTRACK` of `Dp`. Every confirmed flow keeps its entry and
/// its backend; every flood packet is forwarded and counted as a new flow.
#[test]
fn a_flood_evicts_no_confirmed_flow_across_a_backend_set_change() {
    let mut dp = Dp::new(&[service(1..=3)]);
    let flows = 200u16;
    let mut chosen = vec![];
    for i in 0..flows {
        let be = sent_to(&dp, &client(i, TCP_SYN));
        sent_to(&dp, &client(i, TCP_ACK));
        chosen.push(be);
    }
    dp.prog.apply(&[service(1..=4)]).expect("add a backend");
    let moved = (0..flows)
        .filter(|i| {
            // What Maglev says now, for a tuple with no entry: the same
            // flow from another client address.
            let probe = Pkt::tcp(ip("10.77.0.11"), 30000 + i, ip(VIP), PORT, TCP_SYN).build();
            let (_, out) = dp.run_raw(&probe);
            decode(&out).expect("decodes").dst_mac == [0x02, 0x77, 0, 0, 0, 0x24]
        })
        .count();
    let before = Counts::read(dp.prog.maps(), 16);
    let syns = UNCONFIRMED_CAPACITY + 4_000;
    let segments = 5_000u32;
    for i in 0..syns {
        dp.run_raw(&flood::frame(i, true, ip(VIP), PORT).build());
    }
    for i in 0..segments {
        dp.run_raw(&flood::frame(syns + i, false, ip(VIP), PORT).build());
    }
    let after = Counts::read(dp.prog.maps(), 16);
    let total = u64::from(syns + segments);
    assert_eq!(
        after.diff(&before),
        vec![(Reason::TxDsr, total)],
        "every flood packet forwarded and counted once"
    );
    assert_eq!(
        after.new_flows - before.new_flows,
        total,
        "every flood packet counted as a new (unconfirmed) flow"
    );
    let confirmed = dp.prog.maps().confirmed_flows().expect("CONNTRACK");
    assert_eq!(
        confirmed.len(),
        usize::from(flows),
        "CONNTRACK holds the 200 confirmed flows and nothing of the flood"
    );
    for i in 0..flows {
        assert_eq!(
            sent_to(&dp, &client(i, TCP_ACK)),
            chosen[usize::from(i)],
            "flow {i} stays on its backend ({moved} of {flows} would move by Maglev alone)"
        );
    }
    assert!(moved > 0, "the new backend takes some flows by Maglev");
}

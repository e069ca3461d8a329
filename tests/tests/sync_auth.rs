//! Authenticated state sync against a running vipd: datagrams sent from a
//! configured peer's own address (so the source check passes) that are
//! unkeyed, forged, signed with an unknown key, stale or replayed are refused,
//! counted by reason, and write nothing; a correctly signed one is applied.
//! Needs root (namespaces, XDP).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, SystemTime},
};

use vip_tests::{
    netns::{VIP_V4, in_netns, poll_until},
    scenario::{Fwd, LbLab, LbOptions, SYNC_KEY_HEX},
};
use vip_userspace::{
    config::DEFAULT_SYNC_PORT,
    dataplane::kernel::AttachMode,
    sync::{
        auth::Keys,
        wire::{self, Record, Seal},
    },
};

fn v4(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// The `reason`-labelled refusals and the applied count on `node`.
fn sync_counts(l: &LbLab, node: &str) -> (BTreeMap<String, u64>, u64) {
    let m = l.metrics_of(node);
    let rejected = m
        .iter()
        .filter(|(k, v)| k.starts_with("vipd_state_sync_rejected_total{") && **v > 0.0)
        .map(|(k, v)| {
            let reason = k
                .split("reason=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or(k)
                .to_owned();
            (reason, *v as u64)
        })
        .collect();
    let applied = m
        .get("vipd_state_sync_applied_total")
        .copied()
        .unwrap_or(0.0) as u64;
    (rejected, applied)
}

#[test]
fn forged_replayed_and_unkeyed_datagrams_from_a_peers_address_change_nothing() {
    let l = LbLab::start_with(
        "sauth",
        &LbOptions {
            second_lb: true,
            sync: true,
            ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
        },
    );
    // lb2 becomes only an address: its vipd would send datagrams of its own
    // to lb and make the counts below depend on timing.
    if let Some((p, _)) = &l.vipd2 {
        p.kill();
    }
    let lb = l.lab.node("lb").ipv4;
    let peer = l.lab.node("lb2");
    let peer_ns = peer.ns.clone();
    let peer_ip = peer.ipv4;
    let client = l.lab.node("client").ipv4;
    let be1 = l.lab.node("be1").ipv4;
    let target = SocketAddr::new(IpAddr::V4(lb), DEFAULT_SYNC_PORT);
    let record = |client_port: u16| Record {
        family: vip_common::FAMILY_V4,
        proto: vip_common::PROTO_TCP,
        flags: 0,
        client: v4(client),
        vip: v4(VIP_V4),
        client_port,
        vip_port: 6443,
        backend: v4(be1),
        backend_port: 6443,
        nat_port: 45000 + (client_port % 1000),
    };
    let good = Keys::parse("lab", &format!("1 {SYNC_KEY_HEX}")).expect("lab key");
    let wrong = Keys::parse("wrong", &format!("1 {}", "ab".repeat(32))).expect("key");
    let other_id = Keys::parse("other", &format!("9 {SYNC_KEY_HEX}")).expect("key");
    let now = || unix_ms(SystemTime::now());
    let epoch = now();
    let sealed = |keys: &Keys, seq: u32, sent_ms: u64, port: u16| {
        let mut out = vec![];
        let seal = Seal {
            key: keys.signing(),
            epoch,
            sent_ms,
        };
        wire::encode(seq, &[record(port)], Some(&seal), &mut out);
        out
    };
    let send = |buf: &[u8]| {
        in_netns(&peer_ns, || {
            let s = UdpSocket::bind((peer_ip, 0)).expect("bind on the peer's address");
            s.send_to(buf, target).expect("send");
        })
    };
    let (before, applied0) = sync_counts(&l, "lb");
    assert!(before.is_empty(), "refusals before the test: {before:?}");

    let valid = sealed(&good, 1, now(), 41001);
    let mut unkeyed = vec![];
    wire::encode(2, &[record(41002)], None, &mut unkeyed);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("applied", valid.clone()),
        ("replayed", valid),
        ("unkeyed", unkeyed),
        ("forged", sealed(&wrong, 3, now(), 41003)),
        ("unknown_key", sealed(&other_id, 4, now(), 41004)),
        ("stale", sealed(&good, 5, now() - 60_000, 41005)),
    ];
    let mut want = BTreeMap::new();
    for (what, buf) in &cases {
        send(buf);
        // The metrics are refreshed once a second: wait for this datagram's
        // count before sending the next, so each is attributed to its case.
        if *what == "applied" {
            poll_until(
                Duration::from_secs(5),
                || format!("lb applies the signed record: {:?}", sync_counts(&l, "lb")),
                || sync_counts(&l, "lb").1 == applied0 + 1,
            );
        } else {
            *want.entry((*what).to_owned()).or_insert(0) += 1;
            poll_until(
                Duration::from_secs(5),
                || {
                    format!(
                        "lb counts {what}: {:?}, want {want:?}",
                        sync_counts(&l, "lb")
                    )
                },
                || sync_counts(&l, "lb").0 == want,
            );
        }
    }
    // Settled: nothing but the one signed record was written.
    std::thread::sleep(Duration::from_millis(1500));
    let (rejected, applied) = sync_counts(&l, "lb");
    assert_eq!(rejected, want, "every refusal counted under its reason");
    assert_eq!(
        applied,
        applied0 + 1,
        "only the correctly signed, new datagram wrote to the flow table"
    );
    let logs = l.vipd.logs();
    assert!(
        logs.contains("state sync: datagram refused"),
        "the refusal is logged for the operator:\n{logs}"
    );
}

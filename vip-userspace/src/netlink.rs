//! Blocking rtnetlink requests for the few host changes vipd makes outside
//! its maps (a VIP address, a tunnel device up or down, the XDP attachment
//! check, an IPv6 neighbour lookup): one request, its acknowledgement or
//! dump, on a socket of the calling thread's network namespace, as `ip`
//! (iproute2) would have sent it. With these vipd runs no external command,
//! so its image holds the binary alone (deploy/Containerfile).
//!
//! Blocking on purpose: the callers are synchronous (the VRRP router's
//! actions, the host guard's restore on drop, `vipd import`), and a request
//! answered by the kernel in microseconds costs less than the subprocess it
//! replaces. The async connection of [`crate::route`] and [`crate::neigh`]
//! needs a runtime these callers do not always have.

use std::io;

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Sends `msg` (with `flags` besides NLM_F_REQUEST and NLM_F_ACK) and
/// returns what the kernel answered before its acknowledgement or the end
/// of the dump. A refusal comes back as the kernel's errno
/// (`io::Error::raw_os_error`), e.g. EEXIST for an address already there.
pub fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;

    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0)?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut answers = vec![];
    loop {
        let (bytes, _) = sock.recv_from_full()?;
        let mut at = 0;
        while at < bytes.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let len = reply.header.length as usize;
            if len == 0 {
                // A zero length would never advance: the buffer is corrupt.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink message of length 0",
                ));
            }
            at += len;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => {
                    answers.push(m);
                    // A single answer (RTM_GETLINK of one link) comes
                    // before the ACK; a dump's parts end with NLMSG_DONE.
                }
                // NLMSG_ERROR with code 0 is the acknowledgement.
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::Done(_) if dump => return Ok(answers),
                _ => {}
            }
        }
    }
}

//! The socket system calls the VRRP transport and `announce` share: a
//! close-on-exec socket on the tokio reactor, setsockopt, SO_BINDTODEVICE,
//! and the C address structs, with errors that name the interface.

use super::*;

/// Hands `fd` to the tokio reactor of the current runtime.
pub(crate) fn register(
    fd: OwnedFd,
    ifname: &str,
    kind: &'static str,
) -> Result<AsyncFd<OwnedFd>, NetError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(NetError::NoRuntime {
            ifname: ifname.to_owned(),
        });
    }
    // SAFETY: an OwnedFd's as_raw_fd is the descriptor it owns, open and
    // unchanged until the OwnedFd (moved into the AsyncFd) is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| NetError::Socket {
        ifname: ifname.to_owned(),
        kind,
        source: e.into_parts().1,
    })
}

/// A close-on-exec socket.
pub(crate) fn socket(domain: c_int, ty: c_int, protocol: c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn socket_error(ifname: &str, kind: &'static str, source: io::Error) -> NetError {
    if source.raw_os_error() == Some(libc::EAFNOSUPPORT) {
        return NetError::Ipv6Unavailable {
            ifname: ifname.to_owned(),
        };
    }
    NetError::Socket {
        ifname: ifname.to_owned(),
        kind,
        source,
    }
}

pub(crate) fn option_error(ifname: &str, option: &'static str, source: io::Error) -> NetError {
    NetError::SocketOption {
        ifname: ifname.to_owned(),
        option,
        source,
    }
}

/// setsockopt(2) with a plain C value.
pub(crate) fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: c_int,
    name: c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: value points to size_of::<T>() readable bytes for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            socklen_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SO_BINDTODEVICE: the socket sends and receives on `ifname` only, whatever
/// the routing table says, and follows the name if the index changes.
pub(crate) fn bind_to_device(fd: BorrowedFd<'_>, ifname: &str) -> Result<(), NetError> {
    let bytes = ifname.as_bytes();
    let len = libc::socklen_t::try_from(bytes.len()).map_err(|_| LinkError::BadName {
        ifname: ifname.to_owned(),
    })?;
    // SAFETY: bytes is valid for reads of len bytes for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast::<c_void>(),
            len,
        )
    };
    if rc < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENODEV) {
            return Err(LinkError::NoInterface {
                ifname: ifname.to_owned(),
            }
            .into());
        }
        return Err(option_error(ifname, "SO_BINDTODEVICE", source));
    }
    Ok(())
}

/// `size_of::<T>()` as socklen_t, for the small fixed C structs passed here.
pub(crate) const fn socklen_of<T>() -> libc::socklen_t {
    const { assert!(mem::size_of::<T>() <= u16::MAX as usize) };
    mem::size_of::<T>() as libc::socklen_t
}

pub(crate) fn in_addr(addr: Ipv4Addr) -> libc::in_addr {
    // s_addr holds the address in network byte order: the octets as they are.
    libc::in_addr {
        s_addr: u32::from_ne_bytes(addr.octets()),
    }
}

pub(crate) fn in6_addr(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: addr.octets(),
    }
}

pub(crate) fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain C data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_addr = in_addr(addr);
    sa
}

pub(crate) fn sockaddr_in6(addr: Ipv6Addr, scope_id: u32) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain C data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_addr = in6_addr(addr);
    sa.sin6_scope_id = scope_id;
    sa
}

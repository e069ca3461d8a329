//! The Internet checksum (RFC 1071) and the pseudo-header checksum that TCP,
//! UDP and VRRP share, for every encoder in user space: the VRRP codec and
//! the frames of `dataplane::poke`.
//!
//! The bodies still live in `vrrp::packet`, where the VRRP codec first needed
//! them; they move here when that file is next free to change, and this stays
//! the one path to import them by, so the dataplane does not reach into VRRP.

pub(crate) use crate::vrrp::packet::{internet_checksum, pseudo_header_checksum};

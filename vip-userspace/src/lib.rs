//! The vipd agent as a library: the dataplane loader and map writer, the Maglev
//! table builder, configuration, and the pieces the `vipd` binary wires together.

pub mod agent;
pub mod certcheck;
pub mod config;
pub mod controller;
mod csum;
pub mod dataplane;
pub mod discovery;
pub mod health;
pub mod host;
pub mod http;
pub mod import;
pub mod keys;
pub mod link;
pub mod maglev;
pub mod metrics;
pub mod neigh;
pub mod netlink;
pub mod probe;
pub mod route;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod trace;
pub mod version;
pub mod vrrp;

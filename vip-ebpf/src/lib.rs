#![no_std]
//! Empty host library: lets vip-userspace name this crate as a build-dependency,
//! so cargo rebuilds the agent when the program changes.

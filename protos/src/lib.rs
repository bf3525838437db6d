//! `l7mp-protos`: the Rust of l7mp's own protobufs, generated at build time from `proto/`.
//!
//! - [`config::v1`]: the per-agent resources xDS carries (`type.googleapis.com/l7mp.config.v1.<Message>`).
//! - [`management::v1`]: the Management service of `l7mp-control` (messages, tonic client and server).
//!
//! No logic lives here; conversions to and from the typed model are in `l7mp-api`.

#![allow(clippy::all)]

pub mod config {
    pub mod v1 {
        tonic::include_proto!("l7mp.config.v1");

        /// The xDS type URL prefix of these resources.
        pub const TYPE_PREFIX: &str = "type.googleapis.com/l7mp.config.v1.";
    }
}

pub mod management {
    pub mod v1 {
        tonic::include_proto!("l7mp.management.v1");
    }
}

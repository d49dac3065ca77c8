//! strata: virtual disks with incremental snapshots, shown as raw image
//! files through FUSE.
//!
//! Layers only look down:
//! - [`store`]: the repository engine (disks, layers, snapshots, metadata).
//! - [`control`]: requests to a repository, in process or over the daemon's socket.
//! - [`fs`]: the FUSE driver and the daemon that serves a mount.
//! - [`units`]: sizes as people write them.
//! - [`sys`]: the only module with `unsafe`, wrapping raw system calls.
#![deny(unsafe_code)]

pub mod control;
pub mod fs;
pub mod store;
pub mod sys;
pub mod units;

pub use store::{
    DiskInfo, DiskName, ImageRead, ImageRef, Repository, SnapName, SnapshotInfo, SnapshotRef,
    StoreError,
};

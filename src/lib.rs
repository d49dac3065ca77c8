//! strata: virtual disks with incremental snapshots, shown as raw image
//! files through FUSE.
//!
//! - [`store`]: the repository engine (disks, layers, snapshots, metadata).
//! - [`units`]: sizes as people write them.
//! - [`sys`]: the only module with `unsafe`, wrapping raw system calls.
#![deny(unsafe_code)]

pub mod store;
pub mod sys;
pub mod units;

pub use store::{
    DiskInfo, DiskName, ImageRead, ImageRef, Repository, SnapName, SnapshotInfo, SnapshotRef,
    StoreError,
};

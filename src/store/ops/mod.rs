//! The operations on a repository, a file each: making disks, taking
//! snapshots, deleting, changing disks in place, putting the layer tree in
//! order, gc, retention and usage.

pub mod bookmark;
pub mod create;
pub mod delete;
pub mod diff;
pub mod edit;
pub mod gc;
pub mod identity;
pub mod prune;
pub mod receive;
pub mod reserve;
pub mod send;
pub mod snapshot;
pub mod tidy;
pub mod usage;
pub mod verify;

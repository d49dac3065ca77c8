//! A little space kept in reserve: `REPO/reserve`, a file of
//! [`RESERVE_BYTES`] written at open, so that deleting and gc can still
//! commit when the host file system is full. When one of them runs out of
//! space, the reserve is given up, the step is done again, and the reserve
//! is taken back once deleting has freed space.

use crate::store::error::{Result, StoreError};
use crate::store::Repository;

pub(crate) const RESERVE_FILE: &str = "reserve";
pub(crate) const RESERVE_BYTES: u64 = 4 << 20;

impl StoreError {
    /// Whether the host file system was full.
    pub fn is_no_space(&self) -> bool {
        match self {
            StoreError::Io { source, .. } | StoreError::Uncertain { source, .. } => {
                source.raw_os_error() == Some(libc::ENOSPC)
            }
            _ => false,
        }
    }
}

impl Repository {
    /// Makes sure the reserve exists (best effort: on a full file system
    /// it waits for space to be freed).
    pub(crate) fn ensure_reserve(&self) {
        let st = self.inner.storage.as_ref();
        if !st.wants_reserve() {
            return;
        }
        let path = self.inner.root.join(RESERVE_FILE);
        let tmp = self.inner.paths.tmp.join(format!("{RESERVE_FILE}.0.0.tmp"));
        let have = st
            .open(&path, false)
            .and_then(|f| f.len())
            .is_ok_and(|n| n >= RESERVE_BYTES);
        if have {
            return;
        }
        let _ = st.remove_file(&tmp);
        let made = st.create_new(&tmp).and_then(|f| {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < RESERVE_BYTES {
                f.write_all_at(&zeros, at)?;
                at += zeros.len() as u64;
            }
            f.sync_all()?;
            st.rename(&tmp, &path)
        });
        if let Err(e) = made {
            let _ = st.remove_file(&tmp);
            log::info!("no space for the reserve yet: {e}");
        }
    }

    /// Runs `f`; if it runs out of space, gives up the reserve and runs it
    /// again, then takes the reserve back if it can.
    pub(crate) fn with_reserve<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        match f() {
            Err(e) if e.is_no_space() => {
                let path = self.inner.root.join(RESERVE_FILE);
                if self.inner.storage.remove_file(&path).is_err() {
                    return Err(e);
                }
                log::warn!("{e}: using the space kept in reserve");
                let out = f();
                self.ensure_reserve();
                out
            }
            r => r,
        }
    }
}

//! Names, sizes and tokens as users and streams give them: disk and
//! snapshot names, DISK@SNAP, DISK#SNAP, sizes like 64G, resume tokens.
//! None may panic; every name accepted must be safe as a file name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::store::{DiskName, ImageRef, ResumeToken, SendBase, SnapName, SnapshotRef};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for name in [DiskName::parse(s).map(|n| n.to_string()), SnapName::parse(s).map(|n| n.to_string())]
        .into_iter()
        .flatten()
    {
        // A name never reaches outside the directory it is used in.
        assert!(!name.contains('/') && name != "." && name != ".." && !name.contains('\0'));
        assert!(!name.is_empty());
    }
    let _ = SnapshotRef::parse(s);
    let _ = ImageRef::parse(s);
    let _ = SendBase::parse(s);
    let _ = ResumeToken::parse(s);
    let _ = strata::units::parse_size("size", s);
});

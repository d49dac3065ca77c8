//! Names of disks and snapshots, and the identities the store passes around.
//!
//! A name is 1–128 characters of `[A-Za-z0-9._:-]`, not starting with `.` or
//! `-` (DESIGN.md). Parsing is the only way to build a [`DiskName`] or a
//! [`SnapName`], so every name inside the store is already valid.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest name allowed, in characters (all allowed characters are ASCII).
pub const MAX_NAME_LEN: usize = 128;

/// What is wrong with a name, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {why}")]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub why: String,
}

fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    let err = |why: String| NameError {
        kind,
        name: name.to_owned(),
        why,
    };
    if name.is_empty() {
        return Err(err("it is empty".into()));
    }
    if let Some((pos, c)) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(err(format!(
            "character {c:?} at position {} is not allowed (use letters, digits, '.', '_', ':' and '-')",
            pos + 1
        )));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(err(format!(
            "it is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    if let Some(first @ ('.' | '-')) = name.chars().next() {
        return Err(err(format!("it must not start with {first:?}")));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(name: &str) -> Result<Self, NameError> {
                validate($kind, name)?;
                Ok(Self(name.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                validate($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
    };
}

name_type!(
    /// The name of a disk.
    DiskName,
    "disk"
);
name_type!(
    /// The name of a snapshot, unique within its disk.
    SnapName,
    "snapshot"
);

/// `DISK@SNAP`: one snapshot of one disk.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SnapshotRef {
    pub disk: DiskName,
    pub snap: SnapName,
}

impl fmt::Display for SnapshotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.disk, self.snap)
    }
}

/// What an image argument names: a disk's live image, or one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Live(DiskName),
    Snapshot(SnapshotRef),
}

impl ImageRef {
    /// Parses `DISK` or `DISK@SNAP`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s.split_once('@') {
            None => Ok(ImageRef::Live(DiskName::parse(s)?)),
            Some((disk, snap)) => Ok(ImageRef::Snapshot(SnapshotRef {
                disk: DiskName::parse(disk)?,
                snap: SnapName::parse(snap)?,
            })),
        }
    }

    pub fn disk(&self) -> &DiskName {
        match self {
            ImageRef::Live(d) => d,
            ImageRef::Snapshot(s) => &s.disk,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Live(d) => d.fmt(f),
            ImageRef::Snapshot(s) => s.fmt(f),
        }
    }
}

impl SnapshotRef {
    /// Parses `DISK@SNAP`; a bare `DISK` is refused.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match ImageRef::parse(s)? {
            ImageRef::Snapshot(r) => Ok(r),
            ImageRef::Live(_) => Err(NameError {
                kind: "snapshot",
                name: s.to_owned(),
                why: "expected DISK@SNAPSHOT".into(),
            }),
        }
    }
}

/// A layer's number, unique in its repository and never reused.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LayerId(pub u64);

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A block number within a disk: byte offset / block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlockNo(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for n in ["vm1", "a", "Disk_2.img", "x:y-z", "9", &"a".repeat(128)] {
            DiskName::parse(n).unwrap();
        }
    }

    #[test]
    fn bad_names_say_why() {
        let cases = [
            ("", "empty"),
            (".hidden", "must not start with '.'"),
            ("-x", "must not start with '-'"),
            ("a/b", "character '/' at position 2"),
            ("a b", "character ' ' at position 2"),
            ("é", "character 'é' at position 1"),
            (&"a".repeat(129), "129 characters long"),
        ];
        for (name, why) in cases {
            let e = DiskName::parse(name).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
        }
    }

    #[test]
    fn image_refs() {
        assert_eq!(
            ImageRef::parse("vm@s1").unwrap().to_string(),
            "vm@s1".to_string()
        );
        assert!(matches!(ImageRef::parse("vm").unwrap(), ImageRef::Live(_)));
        assert!(ImageRef::parse("vm@").is_err());
        assert!(ImageRef::parse("vm@a@b").is_err());
        assert!(SnapshotRef::parse("vm").is_err());
    }
}

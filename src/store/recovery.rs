//! What opening a repository does with its files: compare them with the
//! catalog, finish or undo what a crash interrupted, and never delete what
//! it cannot prove was never acknowledged (guarantee 6).
//!
//! | file in `layers/` | what open does |
//! | --- | --- |
//! | named by the catalog | keeps it |
//! | named by the catalog but missing | refuses to open, naming it; changes nothing |
//! | the `.log` of a layer the catalog says is frozen | removes it (its index holds its blocks) |
//! | listed by an open removal intent, not named by the catalog | removes it (a delete committed, and was removing it) |
//! | listed by an open creation intent, not named by the catalog | removes it (its operation never committed) |
//! | the same, but a journal holding `Committed` | refuses to open (the catalog is older than its layers); changes nothing |
//! | a layer id the catalog has not handed out yet | refuses to open (the catalog is older than its layers); changes nothing |
//! | anything else | moves it to `quarantine/<time>/` and says so |
//!
//! `tmp/` only ever holds the temp files of atomic replacement, which
//! nothing names until they are renamed, and is emptied.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, IntentKind};
use super::error::{Result, StoreError};
use super::format::{self, LayerFileKind};
use super::journal::Journal;
use super::layer::{parse_file_name, LayerPaths};
use super::names::LayerId;
use super::storage::{EntryKind, Storage};

pub const QUARANTINE_DIR: &str = "quarantine";

/// What open found and did, for the person who opened the repository.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Messages worth showing (files set aside, work undone).
    pub notices: Vec<String>,
}

/// Compares `layers/` with the catalog and acts as the table in the module
/// doc says. Refusals happen before anything is changed.
pub fn reconcile(
    storage: &dyn Storage,
    root: &Path,
    paths: &LayerPaths,
    cat: &Catalog,
) -> Result<Reconciled> {
    let names = storage
        .read_dir(&paths.dir)
        .map_err(StoreError::io(&paths.dir))?;
    let expected: BTreeSet<(LayerId, LayerFileKind)> = cat.expected_files().into_iter().collect();
    let intended: BTreeSet<(LayerId, LayerFileKind)> = cat
        .intents
        .values()
        .filter(|i| i.kind == IntentKind::Create)
        .flat_map(|i| i.files.iter().copied())
        .collect();
    let removing: BTreeSet<(LayerId, LayerFileKind)> = cat
        .intents
        .values()
        .filter(|i| i.kind == IntentKind::Remove)
        .flat_map(|i| i.files.iter().copied())
        .collect();
    let mut present = BTreeSet::new();
    let mut remove = Vec::new();
    let mut unknown = Vec::new();
    let mut newer = Vec::new();
    let mut committed = Vec::new();
    for name in names {
        let Some((id, kind)) = parse_file_name(&name) else {
            unknown.push(name);
            continue;
        };
        present.insert((id, kind));
        let frozen = cat.layers.get(&id).map(|l| l.frozen.is_some());
        if expected.contains(&(id, kind)) {
            continue;
        }
        if removing.contains(&(id, kind)) {
            // An operation that committed stopped naming it, and was
            // removing it.
            remove.push(name);
        } else if intended.contains(&(id, kind)) {
            // Its journal says the operation did commit: the catalog is
            // older than the layers, and the intent is stale.
            let p = paths.dir.join(&name);
            if kind == LayerFileKind::Log
                && storage
                    .read(&p)
                    .is_ok_and(|b| Journal::holds_committed(&p, &b))
            {
                committed.push(name);
            } else {
                remove.push(name);
            }
        } else if kind == LayerFileKind::Log && frozen == Some(true) {
            remove.push(name);
        } else if id.0 >= cat.next_layer {
            newer.push(name);
        } else {
            unknown.push(name);
        }
    }
    let missing: Vec<PathBuf> = expected
        .iter()
        .filter(|f| !present.contains(f))
        .map(|&(id, kind)| paths.file(id, kind))
        .collect();
    if !committed.is_empty() {
        return Err(StoreError::Inconsistent {
            root: root.to_owned(),
            what: format!(
                "the catalog has an unfinished operation whose layer journals say it committed ({})",
                list(&committed)
            ),
            hint: "The catalog is older than the layers: restored from a copy taken while the \
                   repository was in use, or its last records were lost to damage. Put back the \
                   newest catalog."
                .into(),
        });
    }
    if !newer.is_empty() {
        return Err(StoreError::Inconsistent {
            root: root.to_owned(),
            what: format!(
                "layers/ holds {} that the catalog has never handed out ({})",
                plural(newer.len(), "file"),
                list(&newer)
            ),
            hint: "The catalog is older than the layers: restored from a backup, copied from \
                   elsewhere, or its last records were lost to damage. Put back the newest catalog; \
                   or, to open the repository as that catalog has it, move those files out of \
                   layers/ yourself."
                .into(),
        });
    }
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return Err(StoreError::Inconsistent {
            root: root.to_owned(),
            what: format!(
                "the catalog names {} that {} missing ({})",
                plural(missing.len(), "file"),
                if missing.len() == 1 { "is" } else { "are" },
                names.join(", ")
            ),
            hint: "Restore them from a backup, or put back the catalog that matches the layers."
                .into(),
        });
    }

    // tmp/ holds the temp files of atomic replacement (which nothing names
    // until they are renamed); anything else there is someone else's.
    let mut scratch = Vec::new();
    let mut aside: Vec<(&str, String)> = unknown.into_iter().map(|n| ("layers", n)).collect();
    match storage
        .kind(&paths.tmp)
        .map_err(StoreError::io(&paths.tmp))?
    {
        Some(EntryKind::Dir) => {
            for name in storage
                .read_dir(&paths.tmp)
                .map_err(StoreError::io(&paths.tmp))?
            {
                if format::is_scratch_name(&name) {
                    scratch.push(name);
                } else {
                    aside.push(("tmp", name));
                }
            }
        }
        _ => storage
            .create_dir_all(&paths.tmp)
            .map_err(StoreError::io(&paths.tmp))?,
    }

    let mut out = Reconciled::default();
    if !aside.is_empty() {
        let dir = quarantine(storage, root, &aside)?;
        let names: Vec<String> = aside.iter().map(|(sub, n)| format!("{sub}/{n}")).collect();
        out.notices.push(format!(
            "set aside {} that nothing in the catalog names ({}) in {}; see `strata quarantine list`",
            plural(names.len(), "file"),
            list(&names),
            dir.display()
        ));
    }
    for name in &remove {
        let p = paths.dir.join(name);
        log::info!(
            "removing {} (left by an operation that never committed, or by a freeze)",
            p.display()
        );
        storage.remove_file(&p).map_err(StoreError::io(&p))?;
    }
    if !remove.is_empty() {
        format::sync_dir(storage, &paths.dir)?;
    }
    for name in &scratch {
        let p = paths.tmp.join(name);
        storage.remove_file(&p).map_err(StoreError::io(&p))?;
    }
    Ok(out)
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Moves each `(subdir, name)` from `REPO/subdir/` into a new
/// `quarantine/<time>/subdir/`.
fn quarantine(storage: &dyn Storage, root: &Path, items: &[(&str, String)]) -> Result<PathBuf> {
    let qroot = root.join(QUARANTINE_DIR);
    let stamp = super::default_snapshot_name(super::now_ns()).to_string();
    let mut dir = qroot.join(&stamp);
    let mut n = 2;
    while storage.kind(&dir).map_err(StoreError::io(&dir))?.is_some() {
        dir = qroot.join(format!("{stamp}.{n}"));
        n += 1;
    }
    let mut synced = vec![];
    for (sub, name) in items {
        let target = dir.join(sub);
        storage
            .create_dir_all(&target)
            .map_err(StoreError::io(&target))?;
        let from = root.join(sub).join(name);
        let to = target.join(name);
        log::info!("setting aside {} as {}", from.display(), to.display());
        storage.rename(&from, &to).map_err(StoreError::io(&from))?;
        for d in [target, root.join(sub)] {
            if !synced.contains(&d) {
                synced.push(d);
            }
        }
    }
    synced.extend([dir.clone(), qroot, root.to_owned()]);
    for d in &synced {
        format::sync_dir(storage, d)?;
    }
    Ok(dir)
}

/// What was set aside: one entry per file or directory moved there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedFile {
    /// Relative to the repository.
    pub path: String,
    /// Bytes it holds (a directory: all its files; a link: none).
    pub bytes: u64,
}

/// Every file and directory under `path` (itself included, deepest last),
/// and the bytes of its files.
fn tree(storage: &dyn Storage, path: &Path) -> Result<(Vec<(PathBuf, EntryKind)>, u64)> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        let Some(kind) = storage.kind(&p).map_err(StoreError::io(&p))? else {
            continue;
        };
        match kind {
            EntryKind::Dir => {
                for name in storage.read_dir(&p).map_err(StoreError::io(&p))? {
                    stack.push(p.join(name));
                }
            }
            EntryKind::File => {
                bytes += storage
                    .open(&p, false)
                    .and_then(|f| f.len())
                    .map_err(StoreError::io(&p))?;
            }
            EntryKind::Other => {}
        }
        out.push((p, kind));
    }
    Ok((out, bytes))
}

/// The items set aside: `quarantine/<time>/<subdir>/<name>`.
fn items(storage: &dyn Storage, root: &Path) -> Result<Vec<PathBuf>> {
    let q = root.join(QUARANTINE_DIR);
    let mut out = Vec::new();
    if storage.kind(&q).map_err(StoreError::io(&q))? != Some(EntryKind::Dir) {
        return Ok(out);
    }
    for stamp in storage.read_dir(&q).map_err(StoreError::io(&q))? {
        let d = q.join(stamp);
        if storage.kind(&d).map_err(StoreError::io(&d))? != Some(EntryKind::Dir) {
            out.push(d);
            continue;
        }
        for sub in storage.read_dir(&d).map_err(StoreError::io(&d))? {
            let s = d.join(sub);
            if storage.kind(&s).map_err(StoreError::io(&s))? != Some(EntryKind::Dir) {
                out.push(s);
                continue;
            }
            for name in storage.read_dir(&s).map_err(StoreError::io(&s))? {
                out.push(s.join(name));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Everything in the quarantine.
pub fn list_quarantine(storage: &dyn Storage, root: &Path) -> Result<Vec<QuarantinedFile>> {
    items(storage, root)?
        .into_iter()
        .map(|p| {
            let (_, bytes) = tree(storage, &p)?;
            let rel = p.strip_prefix(root).unwrap_or(&p);
            Ok(QuarantinedFile {
                path: rel.display().to_string(),
                bytes,
            })
        })
        .collect()
}

/// Deletes the quarantine; returns what it held.
pub fn purge_quarantine(storage: &dyn Storage, root: &Path) -> Result<Vec<QuarantinedFile>> {
    let listed = list_quarantine(storage, root)?;
    let (all, _) = tree(storage, &root.join(QUARANTINE_DIR))?;
    // Children come after their directory in `all`: remove from the end.
    for (p, kind) in all.iter().rev() {
        match kind {
            EntryKind::Dir => storage.remove_dir(p),
            _ => storage.remove_file(p),
        }
        .map_err(StoreError::io(p))?;
    }
    if !all.is_empty() {
        format::sync_dir(storage, root)?;
    }
    Ok(listed)
}

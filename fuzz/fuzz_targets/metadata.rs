//! Every on-disk metadata parser on any bytes: the first byte picks the
//! file kind, the rest is the file. Documents and logs are parsed as the
//! store parses them (frames, both copies, records), then their payloads
//! decoded into the structs of every version the store reads. None may
//! panic, hang or allocate without bound.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use strata::store::catalog::CatalogRecord;
use strata::store::format::{
    self, v1, v2, CatalogHeader, JournalRecord, LayerIndex, LogHeader, RepoHeader,
};
use strata::store::ops::{bookmark::Bookmark, receive::ReceiveState, verify::Verified};

fn doc<T: serde::de::DeserializeOwned>(magic: [u8; 8], bytes: &[u8]) {
    let p = Path::new("fuzz");
    if let Ok(d) = format::parse_doc(p, magic, bytes) {
        let _ = format::decode::<T>(p, &d.payload);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let p = Path::new("fuzz");
    match kind % 8 {
        0 => {
            doc::<RepoHeader>(format::MAGIC_REPO, bytes);
            doc::<v1::RepoHeader>(format::MAGIC_REPO, bytes);
        }
        1 => {
            if let Ok(log) = format::parse_log(p, format::MAGIC_CATALOG, bytes) {
                let _ = format::decode::<CatalogHeader>(p, &log.header.payload);
                for r in &log.records {
                    let _ = format::decode::<CatalogRecord>(p, r);
                }
            }
            doc::<v1::Catalog>(format::MAGIC_CATALOG, bytes);
        }
        2 => {
            doc::<LayerIndex>(format::MAGIC_INDEX, bytes);
            doc::<v2::LayerIndex>(format::MAGIC_INDEX, bytes);
            doc::<v1::LayerIndex>(format::MAGIC_INDEX, bytes);
        }
        3 => {
            if let Ok(log) = format::parse_log(p, format::MAGIC_LOG, bytes) {
                let _ = format::decode::<LogHeader>(p, &log.header.payload);
                for r in &log.records {
                    let _ = format::decode::<JournalRecord>(p, r);
                }
            }
        }
        4 => doc::<ReceiveState>(*b"STRATRCV", bytes),
        5 => doc::<Bookmark>(*b"STRATBMK", bytes),
        6 => doc::<Verified>(*b"STRATVFY", bytes),
        _ => {
            // A raw payload, no frame: what a frame with good checksums
            // around garbage would hand the decoders.
            let _ = format::decode::<CatalogRecord>(p, bytes);
            let _ = format::decode::<LayerIndex>(p, bytes);
            let _ = format::decode::<JournalRecord>(p, bytes);
        }
    }
});

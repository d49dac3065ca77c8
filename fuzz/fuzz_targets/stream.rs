//! The send stream's reader on any bytes: it must refuse what is wrong
//! with an error, never panic, hang or allocate without bound (a record's
//! length is checked against MAX_PAYLOAD before its buffer is made).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::store::stream::Reader;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = Reader::new(data) {
        // Every record read consumes at least its 24-byte header, so this
        // ends.
        while let Ok(Some(_)) = r.next_record() {}
    }
});

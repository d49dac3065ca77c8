//! The control protocol's messages on any bytes, as the daemon and the
//! command decode them (with the version check that comes first). None may
//! panic or allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::control::{decode_message, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = decode_message::<Request>(data);
    let _ = decode_message::<Response>(data);
});

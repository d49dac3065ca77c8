//! The control protocol's messages on any bytes, as the daemon and the
//! command decode them. None may panic or allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata::control::{Envelope, Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = postcard::from_bytes::<Envelope<Request>>(data);
    let _ = postcard::from_bytes::<Envelope<Response>>(data);
});

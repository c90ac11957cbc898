//! Multipart extraction (`redcap/multipart.rs`): the first line is the `Content-Type` (its
//! boundary), the rest the body, in chunks of the control byte's size; bit 3 loses the second
//! chunk (a gap). The fields found must not depend on the chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = monitor_fuzz::split_control(data) else {
        return;
    };
    let (content_type, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(content_type) = std::str::from_utf8(content_type) else {
        return;
    };
    monitor_fuzz::form::check(Some(content_type), control, body);
});

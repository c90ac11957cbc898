//! Urlencoded extraction (`redcap/urlencoded.rs`): a body in chunks of the control byte's
//! size; bit 3 loses the second chunk (a gap). The fields found must not depend on the chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((control, body)) = monitor_fuzz::split_control(data) else {
        return;
    };
    monitor_fuzz::form::check(Some("application/x-www-form-urlencoded"), control, body);
});

//! HTTP/1.x in both directions (`http/`): a conversation's client and server bytes (split at
//! `monitor_fuzz::SERVER_SEPARATOR`), cut into chunks and gaps by the control byte, through the
//! HTTP stage, REDCap extraction and the policy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = monitor_fuzz::split_control(data) else {
        return;
    };
    let (client, server) = monitor_fuzz::split_conversation(rest);
    monitor_fuzz::drive_conversation(control, client, server);
});

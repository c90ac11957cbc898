//! HTTP/2 (`http/h2/`): as the `http` target, with the client's bytes after the connection
//! preface, so that every input is read as HTTP/2 frames (HPACK blocks, streams, DATA).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// RFC 9113's client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((control, rest)) = monitor_fuzz::split_control(data) else {
        return;
    };
    let (client, server) = monitor_fuzz::split_conversation(rest);
    let mut with_preface = Vec::with_capacity(PREFACE.len() + client.len());
    with_preface.extend_from_slice(PREFACE);
    with_preface.extend_from_slice(client);
    monitor_fuzz::drive_conversation(control, &with_preface, server);
});

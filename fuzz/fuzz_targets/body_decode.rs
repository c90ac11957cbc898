//! gzip/deflate response bodies (`http/decode.rs`): the control byte picks the coding (bits
//! 6–7), the chunk size (bits 0–2), a small work cap (bit 3) and a loss after the body (bit 4).
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_monitor::fuzzing::decode_body;
use redcap_monitor::stages::http::{BodyDecoding, ContentCoding};

fuzz_target!(|data: &[u8]| {
    let Some((control, body)) = monitor_fuzz::split_control(data) else {
        return;
    };
    let coding = [
        ContentCoding::Gzip,
        ContentCoding::Deflate,
        ContentCoding::Identity,
        ContentCoding::Other,
    ][usize::from(control >> 6)];
    let cap = if control & 0x08 != 0 { 1000 } else { 1 << 24 };
    let chunks: Vec<&[u8]> = body.chunks(monitor_fuzz::chunk_size(control)).collect();
    let interrupted = control & 0x10 != 0;
    let (outcome, decoded) = decode_body(coding, cap, &chunks, interrupted);
    assert!(
        decoded <= cap.max(body.len() as u64),
        "decoded {decoded} past the cap {cap}"
    );
    // Decoding in one piece or in chunks gives the same outcome, and the same size when the
    // size is used (a failed decoding's is not).
    let (whole_outcome, whole_decoded) = decode_body(coding, cap, &[body], interrupted);
    assert_eq!(outcome, whole_outcome, "chunks change the outcome");
    if !matches!(outcome, BodyDecoding::Failed) {
        assert_eq!(decoded, whole_decoded, "chunks change the decoded size");
    }
});

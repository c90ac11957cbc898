//! A stream entry's calls (`stages/cluster.rs`, the binary form the Redis edge publishes and
//! reads): the first two bytes are the number of calls the entry claims, the rest its bytes.
//! Whatever decodes must encode to the same bytes' meaning: decoding the re-encoded calls gives
//! the same calls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_monitor::stages::cluster::SharedCall;

fuzz_target!(|data: &[u8]| {
    let Some((count, bytes)) = data.split_first_chunk::<2>() else {
        return;
    };
    let count = usize::from(u16::from_le_bytes(*count));
    let Ok(calls) = SharedCall::decode_all(bytes, count) else {
        return;
    };
    assert_eq!(calls.len(), count);
    let mut again = Vec::new();
    for call in &calls {
        call.encode(&mut again);
    }
    assert_eq!(SharedCall::decode_all(&again, count).as_ref(), Ok(&calls));
});

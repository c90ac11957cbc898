//! The kernel's ring-buffer records (`capture/kernel.rs`: TC segments; `capture/tls.rs`: the
//! TLS uprobes' plaintext): records, each a little-endian u16 length and its bytes, turned into
//! segments as the probe's drain does, then through the whole pipeline.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_monitor::fuzzing::RingRecords;

fuzz_target!(|data: &[u8]| {
    let mut records = RingRecords::new(8);
    let mut pipeline = monitor_fuzz::pipeline();
    let mut rest = data;
    while let [lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (record, after) = tail.split_at(len);
        rest = after;
        let Some(segments) = records.segments(record) else {
            continue;
        };
        for segment in segments.iter().flatten() {
            // A segment's payload is the record's: never more than was copied.
            assert!(segment.payload.len() <= record.len());
            pipeline.push_segment(segment, &mut |_| {});
        }
    }
    pipeline.finish(&mut |_| {});
});

//! Packet decoding (`capture/decode.rs`): one frame of any of the link types the reader
//! accepts (the control byte picks it), down to its TCP segment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_monitor::stages::decode::{DecodeStats, Frame, LinkType, decode};
use redcap_monitor::shared::model::Timestamp;

const LINKS: [LinkType; 12] = [
    LinkType::NULL,
    LinkType::ETHERNET,
    LinkType::RAW_BSD,
    LinkType::RAW_OPENBSD,
    LinkType::RAW,
    LinkType::LOOP,
    LinkType::LINUX_SLL,
    LinkType::IPV4,
    LinkType::IPV6,
    LinkType::LINUX_SLL2,
    // Link types the decoder does not know.
    LinkType(105),
    LinkType(u16::MAX),
];

fuzz_target!(|data: &[u8]| {
    let Some((control, bytes)) = monitor_fuzz::split_control(data) else {
        return;
    };
    let frame = Frame {
        ts: Timestamp(1_767_600_000_000_000_000),
        link: LINKS[usize::from(control) % LINKS.len()],
        data: bytes,
    };
    let mut stats = DecodeStats::default();
    if let Some(segment) = decode(&frame, &mut stats) {
        // The payload borrows the frame: it must lie inside it.
        let start = segment.payload.as_ptr() as usize;
        let frame_start = bytes.as_ptr() as usize;
        assert!(start >= frame_start && start + segment.payload.len() <= frame_start + bytes.len());
    }
});

//! The pcap/pcapng reader (`capture/file.rs`), and every frame it yields through the whole
//! pipeline, as `redcap-monitor analyze` reads a file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redcap_monitor::edges::capture::CaptureFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = CaptureFile::from_bytes("fuzz.pcap", data.to_vec()) else {
        return;
    };
    let mut pipeline = monitor_fuzz::pipeline();
    for frame in file.frames() {
        let Ok(frame) = frame else {
            break;
        };
        pipeline.push_frame(&frame, &mut |_| {});
    }
    pipeline.finish(&mut |_| {});
});

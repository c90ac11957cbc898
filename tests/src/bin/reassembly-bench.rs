//! reassembly-bench: the reassembler alone on the two shapes of hostile input that used to cost
//! quadratic work, for `cargo xtask bench reassembly`. Prints one JSON object with segments per
//! CPU second of one core (CPU time, so that other work on the machine does not count):
//!
//! - `out_of_order`: one connection whose first data segment is lost, then 16,000 segments of
//!   64 bytes behind the hole, in order (each one lands after everything buffered), then the
//!   missing segment; every byte is delivered once.
//! - `memory_relief`: 50,000 connections each holding one out-of-order KiB, with a total buffer
//!   limit of 20 MiB, so that the limit is crossed again and again and the largest buffers are
//!   flushed each time.

use std::net::{IpAddr, Ipv4Addr};

use monitor_tests::cpu::thread_cpu_time;
use redcap_monitor::shared::model::{Endpoint, Span, TcpFlags, TcpSegment, Timestamp};
use redcap_monitor::stages::reassembly::{Reassembler, ReassemblyLimits};

const OUT_OF_ORDER_SEGMENTS: u32 = 16_000;
const PIECE: usize = 64;
const CONNECTIONS: u16 = 50_000;
const RELIEF_TOTAL: usize = 20 << 20;

fn endpoint(host: u32, port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | host)),
        port,
    }
}

fn segment<'a>(src: Endpoint, dst: Endpoint, seq: u32, payload: &'a [u8]) -> TcpSegment<'a> {
    TcpSegment {
        ts: Timestamp(1_700_000_000_000_000_000),
        src,
        dst,
        seq,
        ack: Some(1),
        flags: TcpFlags {
            ack: true,
            ..TcpFlags::default()
        },
        payload,
        stream_start: Some(1_000),
    }
}

/// Segments per CPU second, and the bytes delivered (to check the work was done).
fn out_of_order() -> (f64, u64) {
    let mut r = Reassembler::new(ReassemblyLimits {
        max_buffered_per_direction: 64 << 20,
        ..ReassemblyLimits::default()
    });
    let (client, server) = (endpoint(2, 40_000), endpoint(1, 80));
    let piece = [b'x'; PIECE];
    let mut delivered = 0u64;
    let mut sink = |e: redcap_monitor::shared::model::StreamEvent<'_>| {
        if let redcap_monitor::shared::model::StreamEvent::Data { bytes, .. } = e {
            delivered += bytes.len() as u64;
        }
    };
    let start = thread_cpu_time();
    for i in 1..=OUT_OF_ORDER_SEGMENTS {
        let seq = 1_000 + i * PIECE as u32;
        r.push(&segment(client, server, seq, &piece), &mut sink);
    }
    r.push(&segment(client, server, 1_000, &piece), &mut sink);
    let cpu = thread_cpu_time() - start;
    (
        f64::from(OUT_OF_ORDER_SEGMENTS + 1) / cpu.as_secs_f64(),
        delivered,
    )
}

/// Segments per CPU second, and how many buffers were flushed.
fn memory_relief() -> (f64, u64) {
    let mut r = Reassembler::new(ReassemblyLimits {
        max_connections: 100_000,
        max_buffered_total: RELIEF_TOTAL,
        max_unconfirmed: 100_000,
        idle_timeout: Span::from_secs(3600),
        ..ReassemblyLimits::default()
    });
    let server = endpoint(1, 80);
    let piece = [b'y'; 1024];
    let start = thread_cpu_time();
    for c in 0..CONNECTIONS {
        let client = endpoint(2 + u32::from(c / 1000), 10_000 + c % 1000);
        // Ahead of the stream's start: buffered.
        r.push(&segment(client, server, 2_000, &piece), &mut |_| {});
    }
    let cpu = thread_cpu_time() - start;
    (
        f64::from(CONNECTIONS) / cpu.as_secs_f64(),
        r.stats().buffer_evictions,
    )
}

fn main() {
    let best = |f: fn() -> (f64, u64)| {
        (0..3)
            .map(|_| f())
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("three runs")
    };
    let (ooo_rate, delivered) = best(out_of_order);
    let (relief_rate, evictions) = best(memory_relief);
    println!(
        "{{\n  \"out_of_order_segments\": {},\n  \"out_of_order_bytes_delivered\": {delivered},\n  \
         \"out_of_order_segments_per_s\": {ooo_rate:.0},\n  \"relief_connections\": {CONNECTIONS},\n  \
         \"relief_buffer_evictions\": {evictions},\n  \"relief_segments_per_s\": {relief_rate:.0}\n}}",
        OUT_OF_ORDER_SEGMENTS + 1,
    );
}

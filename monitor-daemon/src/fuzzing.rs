//! Entry points for the fuzz targets in `fuzz/`, built only with the `fuzzing` feature.
//!
//! Owns nothing: each item is a thin public door to a crate-private stage function the fuzz
//! targets need (the ring records' decoding, response body decoding), so that the daemon's
//! public surface stays as it is in every other build. Everything public already is used by the
//! targets directly.

use crate::edges::capture::records::{KernelClock, segment_from_record};
use crate::edges::capture::records::{TlsPeers, is_tls_record, segments_from_record};
use crate::shared::model::TcpSegment;
use crate::stages::http::{BodyDecoding, ContentCoding};

/// Turns kernel ring-buffer records into segments, as `KernelProbe::drain` does: a TC segment
/// record, or a TLS uprobe record (one data segment, or two FINs for an `SSL_free`).
pub struct RingRecords {
    clock: KernelClock,
    peers: TlsPeers,
}

impl RingRecords {
    /// `tls_connections`: how many TLS connections' client addresses are remembered.
    pub fn new(tls_connections: usize) -> RingRecords {
        RingRecords {
            // Kernel time is taken as epoch time: runs repeat exactly.
            clock: KernelClock::offset(0),
            peers: TlsPeers::new(tls_connections),
        }
    }

    /// The segments of one record, or `None` when the record is malformed (the probe counts it).
    pub fn segments<'a>(&mut self, record: &'a [u8]) -> Option<[Option<TcpSegment<'a>>; 2]> {
        if is_tls_record(record) {
            // The kernel's TLS table is not there: no socket is taken to be still tracked, so
            // peers are never looked up by a descriptor that may name another connection.
            segments_from_record(record, &self.clock, &mut self.peers, &|_| false)
        } else {
            segment_from_record(record, &self.clock).map(|segment| [Some(segment), None])
        }
    }
}

/// Decodes one response body given in `chunks` with `coding`, at most `cap` decoded bytes, as the
/// HTTP stage does; `interrupted`: bytes were lost after the chunks. Returns the outcome and the
/// decoded size.
pub fn decode_body(
    coding: ContentCoding,
    cap: u64,
    chunks: &[&[u8]],
    interrupted: bool,
) -> (BodyDecoding, u64) {
    let mut decoder = crate::stages::http::decode::BodyDecoder::new(coding, cap);
    let mut scratch = vec![0; 4096];
    let mut wire = 0u64;
    for chunk in chunks {
        decoder.feed(chunk, &mut scratch);
        wire += chunk.len() as u64;
    }
    if interrupted {
        decoder.interrupt();
    }
    decoder.outcome(wire)
}

//! Streaming gzip/deflate decoding of response bodies, only to learn their decoded size.
//!
//! Decoded bytes go to a caller's reused scratch buffer and are only counted, never kept; work is
//! capped per body. Deflate is accepted zlib-wrapped or raw, as browsers do.

use flate2::{Decompress, FlushDecompress, Status};

use super::{BodyDecoding, ContentCoding};

enum Inflate {
    /// Identity or an unsupported coding: nothing to decode.
    Pass,
    /// Deflate before its first two bytes tell zlib-wrapped from raw.
    Sniff {
        first: Option<u8>,
    },
    Running(Box<Decompress>),
    Ended,
    Capped,
    Failed,
}

/// Decodes one response body as it arrives.
pub(crate) struct BodyDecoder {
    coding: ContentCoding,
    state: Inflate,
    decoded: u64,
    cap: u64,
}

/// Heap an inflater holds while it runs: zlib's 32 KiB window and its tables (miniz_oxide's
/// `InflateState`, rounded up).
const INFLATE_STATE_BYTES: usize = 48 * 1024;

impl BodyDecoder {
    /// Heap this decoder holds (for the stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        match self.state {
            Inflate::Running(_) => INFLATE_STATE_BYTES,
            _ => 0,
        }
    }

    pub(crate) fn new(coding: ContentCoding, cap: u64) -> Self {
        let state = match coding {
            ContentCoding::Identity | ContentCoding::Other => Inflate::Pass,
            ContentCoding::Gzip => Inflate::Running(Box::new(Decompress::new_gzip(15))),
            ContentCoding::Deflate => Inflate::Sniff { first: None },
        };
        Self {
            coding,
            state,
            decoded: 0,
            cap,
        }
    }

    pub(crate) fn feed(&mut self, input: &[u8], scratch: &mut [u8]) {
        if let Inflate::Sniff { first } = self.state {
            let (b0, b1) = match (first, input) {
                (_, []) => return,
                (None, [only]) => {
                    self.state = Inflate::Sniff { first: Some(*only) };
                    return;
                }
                (None, [b0, b1, ..]) => (*b0, *b1),
                (Some(b0), [b1, ..]) => (b0, *b1),
            };
            self.state = Inflate::Running(Box::new(Decompress::new(is_zlib_header(b0, b1))));
            if first.is_some() {
                self.inflate(&[b0], scratch);
            }
        }
        self.inflate(input, scratch);
    }

    /// Bytes of the body were lost: decoding cannot go on.
    pub(crate) fn interrupt(&mut self) {
        if matches!(self.state, Inflate::Sniff { .. } | Inflate::Running(_)) {
            self.state = Inflate::Failed;
        }
    }

    /// The outcome once the body has ended (or stopped): how decoding went and the decoded size.
    pub(crate) fn outcome(&self, wire_bytes: u64) -> (BodyDecoding, u64) {
        match (&self.state, self.coding) {
            (_, ContentCoding::Identity) => (BodyDecoding::Identity, wire_bytes),
            (_, ContentCoding::Other) => (BodyDecoding::Unsupported, wire_bytes),
            (Inflate::Ended, _) => (BodyDecoding::Decoded, self.decoded),
            (Inflate::Capped, _) => (BodyDecoding::Capped, self.decoded),
            // An encoded response without a body (e.g. Content-Length: 0) has nothing to decode.
            _ if wire_bytes == 0 => (BodyDecoding::Identity, 0),
            // A stream that stopped before its end is not valid for its coding.
            _ => (BodyDecoding::Failed, self.decoded),
        }
    }

    fn inflate(&mut self, mut input: &[u8], scratch: &mut [u8]) {
        let Inflate::Running(inflater) = &mut self.state else {
            return;
        };
        let next = loop {
            let room = usize::try_from((self.cap - self.decoded).saturating_add(1))
                .unwrap_or(usize::MAX)
                .min(scratch.len());
            let Some(out) = scratch.get_mut(..room) else {
                break None;
            };
            let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
            let status = inflater.decompress(input, out, FlushDecompress::None);
            let used = usize::try_from(inflater.total_in() - in_before).unwrap_or(usize::MAX);
            let produced = inflater.total_out() - out_before;
            self.decoded += produced;
            input = input.get(used..).unwrap_or_default();
            if self.decoded > self.cap {
                self.decoded = self.cap;
                break Some(Inflate::Capped);
            }
            match status {
                Err(_) => break Some(Inflate::Failed),
                Ok(Status::StreamEnd) => break Some(Inflate::Ended),
                Ok(Status::Ok | Status::BufError) => {}
            }
            let output_full = produced == room as u64;
            if (used == 0 && produced == 0) || (input.is_empty() && !output_full) {
                break None;
            }
        };
        if let Some(next) = next {
            self.state = next;
        }
    }
}

/// RFC 1950: CM = 8, CINFO <= 7, and the header is a multiple of 31.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use std::io::Write;

    /// Text that compresses, but not to nothing.
    pub(in crate::stages::http) fn sample(len: usize) -> Vec<u8> {
        let mut x = 12345u32;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b"abcdefgh ,\n"[(x >> 16) as usize % 11]
            })
            .collect()
    }

    pub(in crate::stages::http) fn gzip(plain: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(plain).unwrap();
        enc.finish().unwrap()
    }

    pub(in crate::stages::http) fn zlib(plain: &[u8]) -> Vec<u8> {
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
        enc.write_all(plain).unwrap();
        enc.finish().unwrap()
    }

    pub(in crate::stages::http) fn raw_deflate(plain: &[u8]) -> Vec<u8> {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
        enc.write_all(plain).unwrap();
        enc.finish().unwrap()
    }

    fn decode(coding: ContentCoding, body: &[u8], piece: usize, cap: u64) -> (BodyDecoding, u64) {
        let mut scratch = vec![0u8; 1024];
        let mut decoder = BodyDecoder::new(coding, cap);
        for chunk in body.chunks(piece) {
            decoder.feed(chunk, &mut scratch);
        }
        decoder.outcome(body.len() as u64)
    }

    #[test]
    fn gzip_decoded_size_is_exact_in_pieces_of_any_size() {
        let gz = gzip(&sample(50_000));
        for piece in [1, 2, 7, 1000, gz.len()] {
            assert_eq!(
                decode(ContentCoding::Gzip, &gz, piece, u64::MAX),
                (BodyDecoding::Decoded, 50_000),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn deflate_is_decoded_zlib_wrapped_or_raw() {
        let plain = sample(3000);
        let (zlib, raw) = (zlib(&plain), raw_deflate(&plain));
        for piece in [1, 3, 5000] {
            assert_eq!(
                decode(ContentCoding::Deflate, &zlib, piece, u64::MAX),
                (BodyDecoding::Decoded, 3000)
            );
            assert_eq!(
                decode(ContentCoding::Deflate, &raw, piece, u64::MAX),
                (BodyDecoding::Decoded, 3000)
            );
        }
    }

    #[test]
    fn decoding_stops_at_the_cap() {
        let gz = gzip(&sample(100_000));
        assert_eq!(
            decode(ContentCoding::Gzip, &gz, 500, 10_000),
            (BodyDecoding::Capped, 10_000)
        );
        assert_eq!(
            decode(ContentCoding::Gzip, &gz, 500, 100_000),
            (BodyDecoding::Decoded, 100_000)
        );
    }

    #[test]
    fn invalid_or_truncated_gzip_fails() {
        assert_eq!(
            decode(ContentCoding::Gzip, b"this is not gzip at all", 4, u64::MAX).0,
            BodyDecoding::Failed
        );
        let gz = gzip(&sample(1000));
        assert_eq!(
            decode(ContentCoding::Gzip, &gz[..gz.len() / 2], 4, u64::MAX).0,
            BodyDecoding::Failed
        );
    }
}

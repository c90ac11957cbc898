//! Body framing: Content-Length, chunked and read-until-close bodies, fed in pieces of any size.
//!
//! Hands de-chunked data to a sink as slices of the input: never copies or keeps body bytes, and
//! holds only a few counters per body. Chunk-size lines and trailers may be split at any byte.

use memchr::memchr;

use super::head::MAX_PLAUSIBLE_BODY_BYTES;

/// A chunk-size line's extensions may not run longer than this.
const MAX_CHUNK_EXTENSION: u32 = 4096;

/// How far a body has got after one feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BodyFeed {
    pub(crate) consumed: usize,
    pub(crate) done: bool,
}

/// Chunked framing was broken after `consumed` bytes of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadChunk {
    pub(crate) consumed: usize,
}

/// What a capture gap did to a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GapOutcome {
    /// The gap lay inside body data: `len` body bytes were lost and framing goes on; `done` when
    /// the body ended exactly where the gap did.
    Within { done: bool },
    /// The body ended inside the gap after `lost` more bytes; what follows is unknown.
    Overran { lost: u64 },
    /// The gap hit framing (a chunk-size line): the body's end is unknown.
    Broken,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum BodyFraming {
    Length {
        remaining: u64,
    },
    Chunked(ChunkedBody),
    /// Runs until the connection closes (responses only).
    UntilClose,
}

impl BodyFraming {
    pub(crate) fn chunked(max_trailer_bytes: usize) -> Self {
        BodyFraming::Chunked(ChunkedBody::new(max_trailer_bytes))
    }

    /// Frames `input`, handing body data to `sink`; stops at the body's end.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<BodyFeed, BadChunk> {
        match self {
            BodyFraming::Length { remaining } => {
                let take = input
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                if let Some(data) = input.get(..take).filter(|d| !d.is_empty()) {
                    sink(data);
                }
                *remaining -= take as u64;
                Ok(BodyFeed {
                    consumed: take,
                    done: *remaining == 0,
                })
            }
            BodyFraming::Chunked(chunked) => chunked.feed(input, sink),
            BodyFraming::UntilClose => {
                if !input.is_empty() {
                    sink(input);
                }
                Ok(BodyFeed {
                    consumed: input.len(),
                    done: false,
                })
            }
        }
    }

    /// Accounts for `len` bytes that were never captured.
    pub(crate) fn gap(&mut self, len: u64) -> GapOutcome {
        match self {
            BodyFraming::Length { remaining } if len <= *remaining => {
                *remaining -= len;
                GapOutcome::Within {
                    done: *remaining == 0,
                }
            }
            BodyFraming::Length { remaining } => {
                let lost = *remaining;
                *remaining = 0;
                GapOutcome::Overran { lost }
            }
            BodyFraming::Chunked(chunked) => chunked.gap(len),
            BodyFraming::UntilClose => GapOutcome::Within { done: false },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size { value: u64, digits: u8 },
    SizeLf { value: u64 },
    Extension { value: u64 },
    Data { remaining: u64 },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerCr,
    TrailerLine,
}

/// Chunked transfer coding (RFC 9112 §7.1) as a byte-driven state machine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkedBody {
    state: ChunkState,
    extension_bytes: u32,
    trailer_bytes: usize,
    max_trailer_bytes: usize,
}

impl ChunkedBody {
    fn new(max_trailer_bytes: usize) -> Self {
        Self {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
            extension_bytes: 0,
            trailer_bytes: 0,
            max_trailer_bytes,
        }
    }

    fn feed(&mut self, input: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<BodyFeed, BadChunk> {
        let mut i = 0;
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            match self.state {
                ChunkState::Data { remaining } => {
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    sink(rest.get(..take).unwrap_or_default());
                    i += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining }
                    };
                }
                ChunkState::Extension { value } => {
                    let (skip, line_end) = match memchr(b'\n', rest) {
                        Some(p) => (p + 1, true),
                        None => (rest.len(), false),
                    };
                    i += skip;
                    self.extension_bytes = self
                        .extension_bytes
                        .saturating_add(u32::try_from(skip).unwrap_or(u32::MAX));
                    if self.extension_bytes > MAX_CHUNK_EXTENSION {
                        return Err(BadChunk { consumed: i });
                    }
                    if line_end {
                        self.end_size_line(value);
                    }
                }
                ChunkState::TrailerLine => {
                    let (skip, line_end) = match memchr(b'\n', rest) {
                        Some(p) => (p + 1, true),
                        None => (rest.len(), false),
                    };
                    i += skip;
                    self.trailer_bytes = self.trailer_bytes.saturating_add(skip);
                    if self.trailer_bytes > self.max_trailer_bytes {
                        return Err(BadChunk { consumed: i });
                    }
                    if line_end {
                        self.state = ChunkState::TrailerLineStart;
                    }
                }
                _ => {
                    let b = rest.first().copied().unwrap_or_default();
                    i += 1;
                    match self.step(b) {
                        Ok(true) => {
                            return Ok(BodyFeed {
                                consumed: i,
                                done: true,
                            });
                        }
                        Ok(false) => {}
                        Err(()) => return Err(BadChunk { consumed: i }),
                    }
                }
            }
        }
        Ok(BodyFeed {
            consumed: i,
            done: false,
        })
    }

    /// One byte of a size line, a chunk's CRLF or a trailer line start; `Ok(true)` at the end.
    fn step(&mut self, b: u8) -> Result<bool, ()> {
        match self.state {
            ChunkState::Size { value, digits } => match (b as char).to_digit(16) {
                Some(d) => {
                    if value > (MAX_PLAUSIBLE_BODY_BYTES >> 4) {
                        return Err(());
                    }
                    self.state = ChunkState::Size {
                        value: (value << 4) | u64::from(d),
                        digits: digits.saturating_add(1),
                    };
                }
                None if digits == 0 => return Err(()),
                None => match b {
                    b';' | b' ' | b'\t' => {
                        self.extension_bytes = 0;
                        self.state = ChunkState::Extension { value };
                    }
                    b'\r' => self.state = ChunkState::SizeLf { value },
                    b'\n' => self.end_size_line(value),
                    _ => return Err(()),
                },
            },
            ChunkState::SizeLf { value } if b == b'\n' => self.end_size_line(value),
            ChunkState::DataCr if b == b'\r' => self.state = ChunkState::DataLf,
            ChunkState::DataCr | ChunkState::DataLf if b == b'\n' => {
                self.state = ChunkState::Size {
                    value: 0,
                    digits: 0,
                };
            }
            ChunkState::TrailerLineStart | ChunkState::TrailerCr if b == b'\n' => return Ok(true),
            ChunkState::TrailerLineStart if b == b'\r' => self.state = ChunkState::TrailerCr,
            ChunkState::TrailerLineStart => {
                self.trailer_bytes = self.trailer_bytes.saturating_add(1);
                self.state = ChunkState::TrailerLine;
            }
            _ => return Err(()),
        }
        Ok(false)
    }

    fn end_size_line(&mut self, value: u64) {
        self.state = if value == 0 {
            ChunkState::TrailerLineStart
        } else {
            ChunkState::Data { remaining: value }
        };
    }

    fn gap(&mut self, len: u64) -> GapOutcome {
        match self.state {
            ChunkState::Data { remaining } if len < remaining => {
                self.state = ChunkState::Data {
                    remaining: remaining - len,
                };
                GapOutcome::Within { done: false }
            }
            ChunkState::Data { remaining } if len == remaining => {
                self.state = ChunkState::DataCr;
                GapOutcome::Within { done: false }
            }
            _ => GapOutcome::Broken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: &mut BodyFraming, pieces: &[&[u8]]) -> (Vec<u8>, Result<BodyFeed, BadChunk>) {
        let mut data = Vec::new();
        let mut last = Ok(BodyFeed {
            consumed: 0,
            done: false,
        });
        for piece in pieces {
            last = framing.feed(piece, &mut |d: &[u8]| data.extend_from_slice(d));
            if last.is_err() || last.is_ok_and(|f| f.done) {
                break;
            }
        }
        (data, last)
    }

    const CHUNKED: &[u8] =
        b"4;name=v\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";

    #[test]
    fn chunked_body_is_dechunked_at_every_split() {
        let body_end = CHUNKED.len() - 4;
        for split in 0..=body_end {
            let mut framing = BodyFraming::chunked(1024);
            let (a, b) = CHUNKED.split_at(split);
            let (data, last) = run(&mut framing, &[a, b]);
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.", "split {split}");
            let consumed = if split < body_end {
                body_end - split
            } else {
                body_end
            };
            assert_eq!(
                last,
                Ok(BodyFeed {
                    consumed,
                    done: true
                }),
                "split {split}"
            );
        }
    }

    #[test]
    fn chunk_size_overflow_and_missing_crlf_are_bad_chunks() {
        let mut framing = BodyFraming::chunked(1024);
        assert!(run(&mut framing, &[b"FFFFFFFFFFFFFFFFFFFF\r\n"]).1.is_err());
        let mut framing = BodyFraming::chunked(1024);
        assert_eq!(
            run(&mut framing, &[b"2\r\nabX"]).1,
            Err(BadChunk { consumed: 6 })
        );
        let mut framing = BodyFraming::chunked(1024);
        assert!(run(&mut framing, &[b"\r\n"]).1.is_err());
    }

    #[test]
    fn oversize_trailer_is_a_bad_chunk() {
        let mut framing = BodyFraming::chunked(8);
        assert!(
            run(&mut framing, &[b"0\r\nX-Long-Trailer: 1\r\n\r\n"])
                .1
                .is_err()
        );
    }

    #[test]
    fn gap_inside_chunk_data_is_skipped_but_not_across_size_lines() {
        let mut framing = BodyFraming::chunked(64);
        run(&mut framing, &[b"a\r\n01"]).1.unwrap();
        assert_eq!(framing.gap(8), GapOutcome::Within { done: false });
        let (_, last) = run(&mut framing, &[b"\r\n0\r\n\r\n"]);
        assert!(last.unwrap().done);
        let mut framing = BodyFraming::chunked(64);
        run(&mut framing, &[b"a\r\n01"]).1.unwrap();
        assert_eq!(framing.gap(9), GapOutcome::Broken);
    }

    #[test]
    fn content_length_gap_may_overrun_the_body() {
        let mut framing = BodyFraming::Length { remaining: 10 };
        assert_eq!(framing.gap(4), GapOutcome::Within { done: false });
        assert_eq!(framing.gap(10), GapOutcome::Overran { lost: 6 });
    }
}

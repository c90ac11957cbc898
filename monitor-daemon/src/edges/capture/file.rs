//! pcap and pcapng readers over a memory map: frames borrow the file's bytes, nothing is copied.
//!
//! Handles classic pcap (micro- and nanosecond, either byte order) and pcapng (any number of
//! sections and interfaces, each with its own link type, timestamp resolution and offset).
//! Unknown pcapng blocks are skipped. Decoding what is inside a frame is `decode`'s job.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::shared::model::Timestamp;
use crate::stages::decode::{Frame, LinkType};

/// Why a capture file cannot be read (further). Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read capture file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} is not a pcap or pcapng capture file ({found}); convert it with `editcap -F pcap` or capture with `tcpdump -w`",
        path.display()
    )]
    NotACapture { path: PathBuf, found: String },
    #[error(
        "{}: truncated {what} at offset {offset}: the file ends inside it (was the capture cut short?)",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        offset: u64,
        what: &'static str,
    },
    #[error("{}: malformed {what} at offset {offset}: {problem}", path.display())]
    Malformed {
        path: PathBuf,
        offset: u64,
        what: &'static str,
        problem: String,
    },
}

/// A capture file mapped into memory (or held in memory, for tests and pipes).
pub struct CaptureFile {
    path: PathBuf,
    bytes: Bytes,
    format: Format,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

#[derive(Clone, Copy, Debug)]
enum Format {
    Pcap(PcapHeader),
    PcapNg,
}

#[derive(Clone, Copy, Debug)]
struct PcapHeader {
    big_endian: bool,
    nanos: bool,
    link: LinkType,
}

const PCAP_HEADER_LEN: usize = 24;
const PCAP_RECORD_HEADER_LEN: usize = 16;
/// No link layer captures frames this large; a bigger length means a corrupt record header.
const MAX_FRAME_LEN: u32 = 64 << 20;

const BLOCK_SECTION_HEADER: u32 = 0x0A0D_0D0A;
const BLOCK_INTERFACE: u32 = 1;
const BLOCK_OBSOLETE_PACKET: u32 = 2;
const BLOCK_SIMPLE_PACKET: u32 = 3;
const BLOCK_ENHANCED_PACKET: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const OPTION_END: u16 = 0;
const OPTION_IF_TSRESOL: u16 = 9;
const OPTION_IF_TSOFFSET: u16 = 14;

impl CaptureFile {
    /// Maps `path` and checks that it starts like a pcap or pcapng file.
    pub(crate) fn open(path: &Path) -> Result<CaptureFile, CaptureError> {
        let io_error = |source| CaptureError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        let len = file.metadata().map_err(io_error)?.len();
        let bytes = if len == 0 {
            // Mapping an empty file fails on some platforms; an empty capture is simply not one.
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this process. If another process
            // truncates the file while we read it, reads past the new end fault (SIGBUS); that is
            // the documented price of mapping, accepted for offline analysis of finished captures.
            let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
            #[cfg(unix)]
            let _ = map.advise(memmap2::Advice::Sequential);
            Bytes::Mapped(map)
        };
        Self::new(path.to_path_buf(), bytes)
    }

    /// A capture held in memory; `name` is what error messages call it.
    pub fn from_bytes(
        name: impl Into<PathBuf>,
        bytes: Vec<u8>,
    ) -> Result<CaptureFile, CaptureError> {
        Self::new(name.into(), Bytes::Owned(bytes))
    }

    fn new(path: PathBuf, bytes: Bytes) -> Result<CaptureFile, CaptureError> {
        let format = detect_format(&path, bytes.as_slice())?;
        Ok(CaptureFile {
            path,
            bytes,
            format,
        })
    }

    /// The file's size in bytes (the end of [`Frames::position`]).
    pub(crate) fn len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// The frames in file order. Iteration ends after the first error: a capture cannot be
    /// resynchronised after a bad record, but every frame before it has been delivered.
    pub fn frames(&self) -> Frames<'_> {
        let (offset, reader) = match self.format {
            Format::Pcap(header) => (PCAP_HEADER_LEN, Reader::Pcap(header)),
            Format::PcapNg => (
                0,
                Reader::PcapNg(Section {
                    big_endian: false,
                    interfaces: Vec::new(),
                    last_ts: Timestamp::default(),
                }),
            ),
        };
        Frames {
            path: &self.path,
            bytes: self.bytes.as_slice(),
            offset,
            done: false,
            reader,
        }
    }
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

fn detect_format(path: &Path, bytes: &[u8]) -> Result<Format, CaptureError> {
    let Some(magic) = bytes.first_chunk::<4>() else {
        return Err(CaptureError::NotACapture {
            path: path.to_path_buf(),
            found: format!("only {} bytes long", bytes.len()),
        });
    };
    let (big_endian, nanos) = match *magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        [0x0a, 0x0d, 0x0d, 0x0a] => return Ok(Format::PcapNg),
        other => {
            return Err(CaptureError::NotACapture {
                path: path.to_path_buf(),
                found: format!("it starts with {}", hex::encode(other)),
            });
        }
    };
    if bytes.len() < PCAP_HEADER_LEN {
        return Err(CaptureError::Truncated {
            path: path.to_path_buf(),
            offset: 0,
            what: "pcap file header",
        });
    }
    // The upper bits of the link-type field carry FCS information, which we do not need: the IP
    // length fields already exclude a trailing FCS.
    let link = read_u32(bytes, 20, big_endian).unwrap_or(0);
    Ok(Format::Pcap(PcapHeader {
        big_endian,
        nanos,
        link: LinkType((link & 0xffff) as u16),
    }))
}

/// Iterator over a capture's frames; see [`CaptureFile::frames`].
pub struct Frames<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    offset: usize,
    done: bool,
    reader: Reader,
}

enum Reader {
    Pcap(PcapHeader),
    PcapNg(Section),
}

/// The state a pcapng section header resets: byte order and the interface table.
struct Section {
    big_endian: bool,
    interfaces: Vec<Interface>,
    /// Simple packet blocks carry no timestamp; they get the previous packet's.
    last_ts: Timestamp,
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    link: LinkType,
    snaplen: u32,
    resolution: Resolution,
    offset_secs: i64,
}

/// How many nanoseconds one timestamp tick of an interface is (`if_tsresol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolution {
    /// Ticks of 10^-n seconds with n <= 9.
    TimesNanos(u64),
    /// Ticks of 10^-n seconds with n > 9.
    PerNano(u64),
    /// Ticks of 2^-n seconds.
    Binary(u32),
}

impl Resolution {
    const MICROS: Resolution = Resolution::TimesNanos(1_000);

    fn from_tsresol(value: u8) -> Resolution {
        let exponent = u32::from(value & 0x7f);
        if value & 0x80 != 0 {
            Resolution::Binary(exponent)
        } else if exponent <= 9 {
            Resolution::TimesNanos(10u64.pow(9 - exponent))
        } else {
            Resolution::PerNano(10u64.checked_pow(exponent - 9).unwrap_or(u64::MAX))
        }
    }

    fn to_nanos(self, ticks: u64) -> u64 {
        match self {
            Resolution::TimesNanos(factor) => ticks.saturating_mul(factor),
            Resolution::PerNano(divisor) => ticks / divisor,
            Resolution::Binary(exponent) => {
                ((u128::from(ticks) * 1_000_000_000) >> exponent).min(u128::from(u64::MAX)) as u64
            }
        }
    }
}

impl<'a> Frames<'a> {
    /// Bytes of the file consumed so far (for progress reporting).
    pub(crate) fn position(&self) -> u64 {
        self.offset as u64
    }

    fn truncated(&self, offset: usize, what: &'static str) -> CaptureError {
        CaptureError::Truncated {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            what,
        }
    }

    fn malformed(&self, offset: usize, what: &'static str, problem: String) -> CaptureError {
        CaptureError::Malformed {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            what,
            problem,
        }
    }

    fn next_pcap(&mut self, header: PcapHeader) -> Result<Option<Frame<'a>>, CaptureError> {
        let start = self.offset;
        if start >= self.bytes.len() {
            return Ok(None);
        }
        let be = header.big_endian;
        let field = |at| read_u32(self.bytes, start + at, be);
        let (Some(secs), Some(frac), Some(captured)) = (field(0), field(4), field(8)) else {
            return Err(self.truncated(start, "pcap record header"));
        };
        if captured > MAX_FRAME_LEN {
            return Err(self.malformed(
                start,
                "pcap record header",
                format!("captured length {captured} is implausible"),
            ));
        }
        let data_start = start + PCAP_RECORD_HEADER_LEN;
        let Some(data) = self.bytes.get(data_start..data_start + captured as usize) else {
            return Err(self.truncated(start, "pcap record"));
        };
        self.offset = data_start + captured as usize;
        let frac_nanos = if header.nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1_000
        };
        Ok(Some(Frame {
            ts: Timestamp(u64::from(secs) * 1_000_000_000 + frac_nanos),
            link: header.link,
            data,
        }))
    }

    fn next_pcapng(&mut self) -> Result<Option<Frame<'a>>, CaptureError> {
        let bytes = self.bytes;
        loop {
            let start = self.offset;
            if start >= bytes.len() {
                return Ok(None);
            }
            let Reader::PcapNg(section) = &mut self.reader else {
                return Ok(None);
            };
            let Some(block_type) = read_u32(bytes, start, section.big_endian) else {
                return Err(self.truncated(start, "pcapng block header"));
            };
            // The section header's type reads the same in both byte orders; its byte-order magic
            // says how to read everything up to the next section header.
            if block_type == BLOCK_SECTION_HEADER {
                let Some(magic) = read_u32(bytes, start + 8, false) else {
                    return Err(self.truncated(start, "pcapng section header"));
                };
                section.big_endian = match magic {
                    BYTE_ORDER_MAGIC => false,
                    m if m.swap_bytes() == BYTE_ORDER_MAGIC => true,
                    m => {
                        return Err(self.malformed(
                            start,
                            "pcapng section header",
                            format!("byte-order magic {m:#010x} is neither 1a2b3c4d nor its swap"),
                        ));
                    }
                };
                section.interfaces.clear();
            }
            let be = section.big_endian;
            let Some(total_len) = read_u32(bytes, start + 4, be) else {
                return Err(self.truncated(start, "pcapng block header"));
            };
            if total_len < 12 {
                return Err(self.malformed(
                    start,
                    "pcapng block",
                    format!("block length {total_len} is shorter than a block header"),
                ));
            }
            let Some(block) = bytes.get(start..start + total_len as usize) else {
                return Err(self.truncated(start, "pcapng block"));
            };
            // Bodies are padded to 32 bits; a writer that miscounts the padding must not make us
            // lose the rest of the file, so the next block starts at the aligned length.
            self.offset = start
                + (total_len as usize)
                    .next_multiple_of(4)
                    .min(bytes.len() - start);
            let body = block.get(8..block.len() - 4).unwrap_or_default();
            let frame = match block_type {
                BLOCK_INTERFACE => {
                    let interface = parse_interface(body, be)
                        .ok_or_else(|| self.truncated(start, "pcapng interface description"))?;
                    if let Reader::PcapNg(section) = &mut self.reader {
                        section.interfaces.push(interface);
                    }
                    continue;
                }
                BLOCK_ENHANCED_PACKET => self.packet_block(start, body, be, true)?,
                BLOCK_OBSOLETE_PACKET => self.packet_block(start, body, be, false)?,
                BLOCK_SIMPLE_PACKET => self.simple_packet_block(start, body, be)?,
                _ => continue,
            };
            return Ok(Some(frame));
        }
    }

    /// Enhanced (`enhanced`) and obsolete packet blocks: the same fields, except that the
    /// obsolete block has a 16-bit interface id followed by a 16-bit drop count.
    fn packet_block(
        &mut self,
        start: usize,
        body: &'a [u8],
        be: bool,
        enhanced: bool,
    ) -> Result<Frame<'a>, CaptureError> {
        let what = if enhanced {
            "pcapng enhanced packet block"
        } else {
            "pcapng packet block"
        };
        let interface_id = if enhanced {
            read_u32(body, 0, be)
        } else {
            read_u16(body, 0, be).map(u32::from)
        };
        let field = |n: usize| read_u32(body, 4 * n, be);
        let (Some(interface_id), Some(ts_high), Some(ts_low), Some(captured)) =
            (interface_id, field(1), field(2), field(3))
        else {
            return Err(self.malformed(start, what, "block is too short".to_string()));
        };
        let interface = self.interface(start, what, interface_id)?;
        let data_start = 20;
        let Some(data) = body.get(data_start..data_start + captured as usize) else {
            return Err(self.malformed(
                start,
                what,
                format!("captured length {captured} exceeds the block"),
            ));
        };
        let ticks = (u64::from(ts_high) << 32) | u64::from(ts_low);
        let nanos = interface
            .resolution
            .to_nanos(ticks)
            .saturating_add_signed(interface.offset_secs.saturating_mul(1_000_000_000));
        let ts = Timestamp(nanos);
        if let Reader::PcapNg(section) = &mut self.reader {
            section.last_ts = ts;
        }
        Ok(Frame {
            ts,
            link: interface.link,
            data,
        })
    }

    fn simple_packet_block(
        &mut self,
        start: usize,
        body: &'a [u8],
        be: bool,
    ) -> Result<Frame<'a>, CaptureError> {
        const WHAT: &str = "pcapng simple packet block";
        let Some(original) = read_u32(body, 0, be) else {
            return Err(self.malformed(start, WHAT, "block is too short".to_string()));
        };
        let interface = self.interface(start, WHAT, 0)?;
        // The block does not store the captured length: it is the original length cut at the
        // interface's snap length, padding excluded.
        let mut captured = original as usize;
        if interface.snaplen != 0 {
            captured = captured.min(interface.snaplen as usize);
        }
        let data = body.get(4..).unwrap_or_default();
        let data = data.get(..captured).unwrap_or(data);
        let ts = match &self.reader {
            Reader::PcapNg(section) => section.last_ts,
            Reader::Pcap(_) => Timestamp::default(),
        };
        Ok(Frame {
            ts,
            link: interface.link,
            data,
        })
    }

    fn interface(
        &self,
        start: usize,
        what: &'static str,
        id: u32,
    ) -> Result<Interface, CaptureError> {
        let interfaces = match &self.reader {
            Reader::PcapNg(section) => section.interfaces.as_slice(),
            Reader::Pcap(_) => &[],
        };
        interfaces.get(id as usize).copied().ok_or_else(|| {
            self.malformed(
                start,
                what,
                format!(
                    "it names interface {id}, but the section describes {} interface(s)",
                    interfaces.len()
                ),
            )
        })
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, CaptureError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = match self.reader {
            Reader::Pcap(header) => self.next_pcap(header),
            Reader::PcapNg(_) => self.next_pcapng(),
        };
        match next {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

/// Reads an interface description block's body; `None` when it is too short.
fn parse_interface(body: &[u8], be: bool) -> Option<Interface> {
    let link = read_u16(body, 0, be)?;
    let snaplen = read_u32(body, 4, be)?;
    let mut interface = Interface {
        link: LinkType(link),
        snaplen,
        resolution: Resolution::MICROS,
        offset_secs: 0,
    };
    let mut at = 8;
    // Options are optional: a malformed option list ends them, it does not lose the interface.
    while let (Some(code), Some(len)) = (read_u16(body, at, be), read_u16(body, at + 2, be)) {
        let Some(value) = body.get(at + 4..at + 4 + usize::from(len)) else {
            break;
        };
        match code {
            OPTION_END => break,
            OPTION_IF_TSRESOL => {
                if let Some(&resolution) = value.first() {
                    interface.resolution = Resolution::from_tsresol(resolution);
                }
            }
            OPTION_IF_TSOFFSET => {
                if let Some(&raw) = value.first_chunk::<8>() {
                    interface.offset_secs = if be {
                        i64::from_be_bytes(raw)
                    } else {
                        i64::from_le_bytes(raw)
                    };
                }
            }
            _ => {}
        }
        at += 4 + usize::from(len).next_multiple_of(4);
    }
    Some(interface)
}

fn read_u32(bytes: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let raw = *bytes.get(at..)?.first_chunk::<4>()?;
    Some(if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    })
}

fn read_u16(bytes: &[u8], at: usize, big_endian: bool) -> Option<u16> {
    let raw = *bytes.get(at..)?.first_chunk::<2>()?;
    Some(if big_endian {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes 32-bit and 16-bit fields in a chosen byte order.
    struct Writer {
        big_endian: bool,
        bytes: Vec<u8>,
    }

    impl Writer {
        fn new(big_endian: bool) -> Self {
            Self {
                big_endian,
                bytes: Vec::new(),
            }
        }

        fn u32(&mut self, v: u32) -> &mut Self {
            let raw = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.bytes.extend_from_slice(&raw);
            self
        }

        fn u16(&mut self, v: u16) -> &mut Self {
            let raw = if self.big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.bytes.extend_from_slice(&raw);
            self
        }

        fn raw(&mut self, v: &[u8]) -> &mut Self {
            self.bytes.extend_from_slice(v);
            self
        }

        fn pad(&mut self) -> &mut Self {
            while !self.bytes.len().is_multiple_of(4) {
                self.bytes.push(0);
            }
            self
        }

        /// Appends a pcapng block with the given body.
        fn block(&mut self, block_type: u32, body: &[u8]) -> &mut Self {
            let total = 12 + body.len().next_multiple_of(4) as u32;
            self.u32(block_type).u32(total).raw(body).pad().u32(total)
        }

        fn body(&self) -> Vec<u8> {
            self.bytes.clone()
        }
    }

    fn pcap(big_endian: bool, nanos: bool, link: u32, records: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut w = Writer::new(big_endian);
        w.u32(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 })
            .u16(2)
            .u16(4)
            .u32(0)
            .u32(0)
            .u32(65_535)
            .u32(link);
        for (secs, frac, data) in records {
            w.u32(*secs)
                .u32(*frac)
                .u32(data.len() as u32)
                .u32(data.len() as u32)
                .raw(data);
        }
        w.bytes
    }

    /// A frame as (timestamp in nanoseconds, link type, bytes).
    type OwnedFrame = (u64, u16, Vec<u8>);

    fn read_all(bytes: Vec<u8>) -> (Vec<OwnedFrame>, Option<CaptureError>) {
        let file = CaptureFile::from_bytes("test.pcap", bytes).expect("capture header");
        let mut frames = Vec::new();
        let mut error = None;
        for frame in file.frames() {
            match frame {
                Ok(f) => frames.push((f.ts.as_nanos(), f.link.0, f.data.to_vec())),
                Err(e) => error = Some(e),
            }
        }
        (frames, error)
    }

    #[test]
    fn pcap_reads_all_four_magic_variants() {
        for big_endian in [false, true] {
            for nanos in [false, true] {
                let bytes = pcap(big_endian, nanos, 1, &[(10, 7, b"one"), (11, 0, b"two!")]);
                let (frames, error) = read_all(bytes);
                assert!(error.is_none(), "{error:?}");
                let frac = if nanos { 7 } else { 7_000 };
                assert_eq!(
                    frames,
                    vec![
                        (10_000_000_000 + frac, 1, b"one".to_vec()),
                        (11_000_000_000, 1, b"two!".to_vec()),
                    ],
                    "big_endian={big_endian} nanos={nanos}"
                );
            }
        }
    }

    #[test]
    fn pcap_link_type_ignores_the_fcs_bits() {
        let bytes = pcap(false, false, 1 | (1 << 28) | (4 << 26), &[(1, 0, b"x")]);
        assert_eq!(read_all(bytes).0[0].1, 1);
    }

    #[test]
    fn truncated_last_pcap_record_is_an_error_after_the_earlier_frames() {
        let mut bytes = pcap(false, false, 1, &[(1, 0, b"whole"), (2, 0, b"cut short")]);
        let first_end = PCAP_HEADER_LEN + PCAP_RECORD_HEADER_LEN + 5;
        bytes.truncate(bytes.len() - 3);
        let (frames, error) = read_all(bytes);
        assert_eq!(frames.len(), 1);
        let error = error.expect("truncation is reported");
        assert!(
            matches!(error, CaptureError::Truncated { offset, .. } if offset == first_end as u64),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("test.pcap") && message.contains("truncated"),
            "{message}"
        );
    }

    #[test]
    fn truncated_pcap_record_header_is_an_error() {
        let mut bytes = pcap(true, true, 1, &[(1, 0, b"whole")]);
        bytes.extend_from_slice(&[0, 0, 0, 9, 0]);
        let (frames, error) = read_all(bytes);
        assert_eq!(frames.len(), 1);
        assert!(matches!(error, Some(CaptureError::Truncated { .. })));
    }

    #[test]
    fn a_file_that_is_not_a_capture_is_rejected_by_name() {
        for bytes in [b"GET / HTTP/1.1\r\n".to_vec(), b"ab".to_vec(), Vec::new()] {
            let error = CaptureFile::from_bytes("notes.txt", bytes)
                .err()
                .expect("rejected");
            assert!(matches!(error, CaptureError::NotACapture { .. }));
            assert!(error.to_string().contains("notes.txt"), "{error}");
        }
        let short_header = pcap(false, false, 1, &[])[..20].to_vec();
        let error = CaptureFile::from_bytes("short.pcap", short_header).err();
        assert!(matches!(
            error,
            Some(CaptureError::Truncated { offset: 0, .. })
        ));
    }

    fn section_header(w: &mut Writer) {
        let mut body = Writer::new(w.big_endian);
        body.u32(BYTE_ORDER_MAGIC)
            .u16(1)
            .u16(0)
            .u32(u32::MAX)
            .u32(u32::MAX);
        w.block(BLOCK_SECTION_HEADER, &body.body());
    }

    /// An interface block; `tsresol` and `tsoffset` become options when given.
    fn interface(
        w: &mut Writer,
        link: u16,
        snaplen: u32,
        tsresol: Option<u8>,
        tsoffset: Option<i64>,
    ) {
        let mut body = Writer::new(w.big_endian);
        body.u16(link).u16(0).u32(snaplen);
        // An option we do not know comes first and must be skipped.
        body.u16(2).u16(5).raw(b"eth0\0").pad();
        if let Some(resolution) = tsresol {
            body.u16(OPTION_IF_TSRESOL).u16(1).raw(&[resolution]).pad();
        }
        if let Some(offset) = tsoffset {
            let raw = if w.big_endian {
                offset.to_be_bytes()
            } else {
                offset.to_le_bytes()
            };
            body.u16(OPTION_IF_TSOFFSET).u16(8).raw(&raw);
        }
        body.u16(OPTION_END).u16(0);
        w.block(BLOCK_INTERFACE, &body.body());
    }

    fn enhanced_packet(w: &mut Writer, interface: u32, ticks: u64, data: &[u8]) {
        let mut body = Writer::new(w.big_endian);
        body.u32(interface)
            .u32((ticks >> 32) as u32)
            .u32(ticks as u32)
            .u32(data.len() as u32)
            .u32(data.len() as u32 + 100)
            .raw(data)
            .pad();
        // A comment option after the data must not leak into it.
        body.u16(1).u16(3).raw(b"hi!").pad().u16(0).u16(0);
        w.block(BLOCK_ENHANCED_PACKET, &body.body());
    }

    #[test]
    fn pcapng_reads_interfaces_blocks_and_sections_in_both_byte_orders() {
        for big_endian in [false, true] {
            let mut w = Writer::new(big_endian);
            section_header(&mut w);
            interface(&mut w, 1, 0, None, None);
            interface(&mut w, 101, 0, Some(9), Some(-1));
            enhanced_packet(&mut w, 0, 5_000_001, b"micro");
            w.block(0x0000_0BAD, b"unknown block, skipped");
            enhanced_packet(&mut w, 1, 5_000_000_002, b"nano");
            // A simple packet block has no timestamp and belongs to interface 0.
            let mut simple = Writer::new(big_endian);
            simple.u32(6).raw(b"simple").pad();
            w.block(BLOCK_SIMPLE_PACKET, &simple.body());
            let mut obsolete = Writer::new(big_endian);
            obsolete
                .u16(1)
                .u16(0)
                .u32(0)
                .u32(4_000_000_000)
                .u32(3)
                .u32(3)
                .raw(b"old")
                .pad();
            w.block(BLOCK_OBSOLETE_PACKET, &obsolete.body());
            // A new section starts a new interface table, in its own byte order.
            let mut second = Writer::new(!big_endian);
            section_header(&mut second);
            interface(&mut second, 113, 0, Some(0x80 | 10), None);
            enhanced_packet(&mut second, 0, 3 * 1024, b"binary");
            w.raw(&second.bytes);

            let (frames, error) = read_all(w.bytes);
            assert!(error.is_none(), "{error:?}");
            assert_eq!(
                frames,
                vec![
                    (5_000_001_000, 1, b"micro".to_vec()),
                    (4_000_000_002, 101, b"nano".to_vec()),
                    (4_000_000_002, 1, b"simple".to_vec()),
                    (3_000_000_000, 101, b"old".to_vec()),
                    (3_000_000_000, 113, b"binary".to_vec()),
                ],
                "big_endian={big_endian}"
            );
        }
    }

    #[test]
    fn simple_packet_is_cut_at_the_interface_snap_length() {
        let mut w = Writer::new(false);
        section_header(&mut w);
        interface(&mut w, 1, 4, None, None);
        let mut simple = Writer::new(false);
        simple.u32(10).raw(b"abcd");
        w.block(BLOCK_SIMPLE_PACKET, &simple.body());
        assert_eq!(read_all(w.bytes).0[0].2, b"abcd");
    }

    #[test]
    fn pcapng_packet_naming_an_undescribed_interface_is_malformed() {
        let mut w = Writer::new(false);
        section_header(&mut w);
        interface(&mut w, 1, 0, None, None);
        enhanced_packet(&mut w, 0, 1, b"fine");
        enhanced_packet(&mut w, 3, 1, b"orphan");
        let (frames, error) = read_all(w.bytes);
        assert_eq!(frames.len(), 1);
        let error = error.expect("reported");
        assert!(error.to_string().contains("interface 3"), "{error}");
    }

    #[test]
    fn truncated_last_pcapng_block_is_an_error_after_the_earlier_frames() {
        let mut w = Writer::new(true);
        section_header(&mut w);
        interface(&mut w, 1, 0, None, None);
        enhanced_packet(&mut w, 0, 1, b"fine");
        let complete = w.bytes.len();
        enhanced_packet(&mut w, 0, 2, b"cut short by the end of the file");
        w.bytes.truncate(w.bytes.len() - 10);
        let (frames, error) = read_all(w.bytes);
        assert_eq!(frames.len(), 1);
        assert!(
            matches!(error, Some(CaptureError::Truncated { offset, .. }) if offset == complete as u64),
            "{error:?}"
        );
    }

    #[test]
    fn open_maps_a_file_and_position_reaches_its_length() {
        let bytes = pcap(false, false, 1, &[(1, 0, b"a"), (2, 0, b"bb")]);
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, &bytes).expect("write");
        let capture = CaptureFile::open(file.path()).expect("open");
        assert_eq!(capture.len(), bytes.len() as u64);
        let mut frames = capture.frames();
        assert_eq!(frames.position(), PCAP_HEADER_LEN as u64);
        assert_eq!(frames.by_ref().count(), 2);
        assert_eq!(frames.position(), capture.len());

        let missing = CaptureFile::open(Path::new("/nonexistent/capture.pcap")).err();
        assert!(
            missing.is_some_and(|e| e.to_string().contains("/nonexistent/capture.pcap")),
            "names the missing file"
        );
    }
}

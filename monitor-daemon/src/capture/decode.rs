//! Frame decoding: link layer, IPv4/IPv6 and TCP headers to a [`TcpSegment`] that borrows the
//! frame's payload bytes.
//!
//! Link layers are peeled here (they are a few fixed offsets); IP and TCP headers, options and
//! IPv6 extension headers are parsed by etherparse. Every frame that does not yield a segment is
//! counted by reason in [`DecodeStats`]; nothing here allocates or panics on input.

use etherparse::err::{LenError, ip::LaxHeaderSliceError, ipv6_exts, tcp};
use etherparse::{IpNumber, LaxIpSlice, TcpSlice};

use super::file::{Frame, LinkType};
use crate::model::{Endpoint, TcpFlags, TcpSegment};

/// What decoding made of the frames it saw. Every frame lands in exactly one of `tcp_segments`,
/// `unsupported_link`, `non_ip`, `non_tcp`, `ip_fragments`, `truncated_headers` or `malformed`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub frames: u64,
    pub tcp_segments: u64,
    /// Segments whose payload was cut short by the capture's snap length (also counted in
    /// `tcp_segments`: the captured part is delivered and reassembly sees the rest as a gap).
    pub truncated_frames: u64,
    /// Link types this decoder does not know.
    pub unsupported_link: u64,
    /// Frames that do not carry IPv4 or IPv6 (ARP, LLDP, ...).
    pub non_ip: u64,
    /// IP packets that do not carry TCP (UDP, ICMP, ...).
    pub non_tcp: u64,
    /// IP fragments: not reassembled, as TCP endpoints avoid fragmentation.
    pub ip_fragments: u64,
    /// Frames too short to hold their link, IP or TCP header.
    pub truncated_headers: u64,
    /// Headers with impossible values (bad IP version, header length below the minimum, ...).
    pub malformed: u64,
}

/// Why a frame yielded no segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    UnsupportedLink,
    NonIp,
    NonTcp,
    Fragment,
    TruncatedHeader,
    Malformed,
}

impl DecodeStats {
    fn count(&mut self, rejection: Rejection) {
        let counter = match rejection {
            Rejection::UnsupportedLink => &mut self.unsupported_link,
            Rejection::NonIp => &mut self.non_ip,
            Rejection::NonTcp => &mut self.non_tcp,
            Rejection::Fragment => &mut self.ip_fragments,
            Rejection::TruncatedHeader => &mut self.truncated_headers,
            Rejection::Malformed => &mut self.malformed,
        };
        *counter += 1;
    }
}

/// Decodes one frame into the TCP segment it carries, or counts why it carries none.
pub fn decode<'a>(frame: &Frame<'a>, stats: &mut DecodeStats) -> Option<TcpSegment<'a>> {
    stats.frames += 1;
    match decode_tcp(frame) {
        Ok((segment, truncated)) => {
            stats.tcp_segments += 1;
            stats.truncated_frames += u64::from(truncated);
            Some(segment)
        }
        Err(rejection) => {
            stats.count(rejection);
            None
        }
    }
}

/// The segment, and whether its payload is cut short by the snap length.
fn decode_tcp<'a>(frame: &Frame<'a>) -> Result<(TcpSegment<'a>, bool), Rejection> {
    let packet = ip_packet(frame.link, frame.data)?;
    let (ip, extension_error) = LaxIpSlice::from_slice(packet).map_err(|e| match e {
        LaxHeaderSliceError::Len(_) => Rejection::TruncatedHeader,
        LaxHeaderSliceError::Content(_) => Rejection::Malformed,
    })?;
    // Lax parsing stops at a broken extension header and reports it beside the usable part.
    if let Some((error, _)) = extension_error {
        return Err(match error {
            ipv6_exts::HeaderSliceError::Len(_) => Rejection::TruncatedHeader,
            ipv6_exts::HeaderSliceError::Content(_) => Rejection::Malformed,
        });
    }
    let carried = ip.payload();
    if carried.fragmented {
        return Err(Rejection::Fragment);
    }
    if carried.ip_number != IpNumber::TCP {
        return Err(Rejection::NonTcp);
    }
    let tcp = TcpSlice::from_slice(carried.payload).map_err(|e| match e {
        tcp::HeaderSliceError::Len(LenError { .. }) => Rejection::TruncatedHeader,
        tcp::HeaderSliceError::Content(_) => Rejection::Malformed,
    })?;
    let segment = TcpSegment {
        ts: frame.ts,
        src: Endpoint {
            ip: ip.source_addr(),
            port: tcp.source_port(),
        },
        dst: Endpoint {
            ip: ip.destination_addr(),
            port: tcp.destination_port(),
        },
        seq: tcp.sequence_number(),
        ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        flags: TcpFlags {
            syn: tcp.syn(),
            ack: tcp.ack(),
            fin: tcp.fin(),
            rst: tcp.rst(),
        },
        // Bounded by the IP length, so Ethernet padding and trailers never become payload.
        payload: tcp.payload(),
    };
    Ok((segment, carried.incomplete))
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Pre-standard QinQ outer tag, still emitted by some switches.
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

const ETHERNET_HEADER_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const SLL_HEADER_LEN: usize = 16;
const SLL2_HEADER_LEN: usize = 20;
const LOOPBACK_HEADER_LEN: usize = 4;

/// The IP packet inside a frame of the given link type.
fn ip_packet(link: LinkType, data: &[u8]) -> Result<&[u8], Rejection> {
    match link {
        LinkType::ETHERNET => {
            let ethertype = be_u16(data, 12)?;
            ip_after_ethertype(ethertype, data.get(ETHERNET_HEADER_LEN..))
        }
        LinkType::LINUX_SLL => {
            let protocol = be_u16(data, 14)?;
            ip_after_ethertype(protocol, data.get(SLL_HEADER_LEN..))
        }
        LinkType::LINUX_SLL2 => {
            let protocol = be_u16(data, 0)?;
            ip_after_ethertype(protocol, data.get(SLL2_HEADER_LEN..))
        }
        LinkType::NULL => {
            let raw = *data.first_chunk::<4>().ok_or(Rejection::TruncatedHeader)?;
            // The family is in the capturing host's byte order, which the file does not record;
            // families are small numbers, so the order that gives a small value is the right one.
            let family = u32::from_le_bytes(raw);
            let family = if family > 0xffff {
                family.swap_bytes()
            } else {
                family
            };
            ip_after_address_family(family, data)
        }
        LinkType::LOOP => {
            let raw = *data.first_chunk::<4>().ok_or(Rejection::TruncatedHeader)?;
            ip_after_address_family(u32::from_be_bytes(raw), data)
        }
        LinkType::RAW
        | LinkType::RAW_BSD
        | LinkType::RAW_OPENBSD
        | LinkType::IPV4
        | LinkType::IPV6 => Ok(data),
        _ => Err(Rejection::UnsupportedLink),
    }
}

/// Skips any VLAN tags and checks that the ethertype is IP.
fn ip_after_ethertype(mut ethertype: u16, rest: Option<&[u8]>) -> Result<&[u8], Rejection> {
    let mut rest = rest.ok_or(Rejection::TruncatedHeader)?;
    while matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    ) {
        ethertype = be_u16(rest, 2)?;
        rest = rest.get(VLAN_TAG_LEN..).ok_or(Rejection::TruncatedHeader)?;
    }
    match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Ok(rest),
        _ => Err(Rejection::NonIp),
    }
}

/// BSD address families: AF_INET is 2 everywhere, AF_INET6 differs by system.
fn ip_after_address_family(family: u32, frame: &[u8]) -> Result<&[u8], Rejection> {
    const AF_INET: u32 = 2;
    const AF_INET6_LINUX: u32 = 10;
    const AF_INET6_NETBSD_OPENBSD: u32 = 24;
    const AF_INET6_FREEBSD: u32 = 28;
    const AF_INET6_DARWIN: u32 = 30;
    match family {
        AF_INET | AF_INET6_LINUX | AF_INET6_NETBSD_OPENBSD | AF_INET6_FREEBSD | AF_INET6_DARWIN => {
            frame
                .get(LOOPBACK_HEADER_LEN..)
                .ok_or(Rejection::TruncatedHeader)
        }
        _ => Err(Rejection::NonIp),
    }
}

fn be_u16(bytes: &[u8], at: usize) -> Result<u16, Rejection> {
    bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<2>())
        .map(|raw| u16::from_be_bytes(*raw))
        .ok_or(Rejection::TruncatedHeader)
}

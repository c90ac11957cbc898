//! Frame decoding: link layer, IPv4/IPv6 and TCP headers to a [`TcpSegment`] that borrows the
//! frame's payload bytes.
//!
//! Link layers are peeled here (they are a few fixed offsets); IP and TCP headers, options and
//! IPv6 extension headers are parsed by etherparse. Every frame that does not yield a segment is
//! counted by reason in [`DecodeStats`]; nothing here allocates or panics on input.

use etherparse::err::{LenError, ip::LaxHeaderSliceError, ipv6_exts, tcp};
use etherparse::{IpNumber, LaxIpSlice, TcpSlice};

use crate::shared::model::{Endpoint, TcpFlags, TcpSegment, Timestamp};

/// A capture's link-layer header type (the LINKTYPE_* registry number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkType(pub u16);

impl LinkType {
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    pub const NULL: LinkType = LinkType(0);
    pub const ETHERNET: LinkType = LinkType(1);
    /// DLT_RAW as some BSDs wrote it into files (raw IPv4/IPv6).
    pub const RAW_BSD: LinkType = LinkType(12);
    /// DLT_RAW as OpenBSD wrote it into files (raw IPv4/IPv6).
    pub const RAW_OPENBSD: LinkType = LinkType(14);
    pub const RAW: LinkType = LinkType(101);
    /// OpenBSD loopback: a 4-byte address family in network byte order.
    pub const LOOP: LinkType = LinkType(108);
    pub const LINUX_SLL: LinkType = LinkType(113);
    pub const IPV4: LinkType = LinkType(228);
    pub const IPV6: LinkType = LinkType(229);
    pub const LINUX_SLL2: LinkType = LinkType(276);
}

/// One captured frame, borrowing its bytes from wherever it was captured (a file's map, a
/// libpcap buffer).
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub ts: Timestamp,
    pub link: LinkType,
    /// The captured bytes, possibly fewer than were on the wire (snap length).
    pub data: &'a [u8],
}

/// What decoding made of the frames it saw. Every frame lands in exactly one of `tcp_segments`,
/// `unsupported_link`, `non_ip`, `non_tcp`, `ip_fragments`, `truncated_headers`, `malformed` or
/// `checksum_bad`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DecodeStats {
    pub(crate) frames: u64,
    pub(crate) tcp_segments: u64,
    /// Segments whose payload was cut short by the capture's snap length (also counted in
    /// `tcp_segments`: the captured part is delivered and reassembly sees the rest as a gap).
    pub(crate) truncated_frames: u64,
    /// Link types this decoder does not know.
    pub(crate) unsupported_link: u64,
    /// Frames that do not carry IPv4 or IPv6 (ARP, LLDP, ...).
    pub(crate) non_ip: u64,
    /// IP packets that do not carry TCP (UDP, ICMP, ...).
    pub(crate) non_tcp: u64,
    /// IP fragments: not reassembled, as TCP endpoints avoid fragmentation.
    pub(crate) ip_fragments: u64,
    /// Frames too short to hold their link, IP or TCP header.
    pub(crate) truncated_headers: u64,
    /// Headers with impossible values (bad IP version, header length below the minimum, ...).
    pub(crate) malformed: u64,
    /// TCP segments whose checksum is neither right nor the pseudo-header-only value that
    /// checksum offload leaves in locally sent packets: the receiver's kernel drops them, so
    /// they are forged or damaged and must not reach reassembly (a decoy with another token).
    pub(crate) checksum_bad: u64,
    /// Segments accepted on a pseudo-header-only checksum (sent by this host with checksum
    /// offload, or merged by GRO): not verified, counted so that an admin sees how many.
    pub(crate) checksum_offloaded: u64,
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
    ChecksumBad,
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
            Rejection::ChecksumBad => &mut self.checksum_bad,
        };
        *counter += 1;
    }
}

/// Decodes one frame into the TCP segment it carries, or counts why it carries none.
pub fn decode<'a>(frame: &Frame<'a>, stats: &mut DecodeStats) -> Option<TcpSegment<'a>> {
    stats.frames += 1;
    match decode_tcp(frame) {
        Ok((segment, truncated, checksum)) => {
            stats.tcp_segments += 1;
            stats.truncated_frames += u64::from(truncated);
            stats.checksum_offloaded += u64::from(checksum == Checksum::Offloaded);
            Some(segment)
        }
        Err(rejection) => {
            stats.count(rejection);
            None
        }
    }
}

/// The segment, whether its payload is cut short by the snap length, and what its checksum says.
fn decode_tcp<'a>(frame: &Frame<'a>) -> Result<(TcpSegment<'a>, bool, Checksum), Rejection> {
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
    let checksum = if carried.incomplete {
        // The snap length cut the payload: what is missing cannot be summed.
        Checksum::Unverifiable
    } else {
        verify_checksum(&ip.source_addr(), &ip.destination_addr(), tcp.slice())
    };
    if checksum == Checksum::Bad {
        return Err(Rejection::ChecksumBad);
    }
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
        stream_start: None,
    };
    Ok((segment, carried.incomplete, checksum))
}

/// What a segment's TCP checksum says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Checksum {
    Right,
    /// The pseudo-header-only value: the sender's NIC (or GRO) was to fill in the rest.
    Offloaded,
    /// Neither: the receiver's kernel drops such a segment.
    Bad,
    /// The captured bytes are not the whole segment.
    Unverifiable,
}

/// Checks the TCP checksum of `segment` (header and payload, as bounded by the IP length).
///
/// A packet sent by this host with checksum offload (`CHECKSUM_PARTIAL`, as on loopback, veth
/// and any NIC that offloads), or merged by GRO, is captured before its checksum is filled in:
/// its checksum field holds the folded pseudo-header sum, over the segment's length (or over a
/// zero length, as some GSO paths leave it). That value is accepted; anything else that does
/// not sum right is not.
fn verify_checksum(src: &std::net::IpAddr, dst: &std::net::IpAddr, segment: &[u8]) -> Checksum {
    let Ok(len) = u32::try_from(segment.len()) else {
        return Checksum::Unverifiable;
    };
    let pseudo = |len: u32| -> u64 {
        let mut sum = 6u64 + u64::from(len >> 16) + u64::from(len & 0xffff);
        for addr in [src, dst] {
            sum += match addr {
                std::net::IpAddr::V4(a) => ones_sum(&a.octets()),
                std::net::IpAddr::V6(a) => ones_sum(&a.octets()),
            };
        }
        sum
    };
    if fold(pseudo(len) + ones_sum(segment)) == 0xffff {
        return Checksum::Right;
    }
    let field = segment
        .get(16..18)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if field == fold(pseudo(len)) || field == fold(pseudo(0)) {
        Checksum::Offloaded
    } else {
        Checksum::Bad
    }
}

/// Sum of big-endian 16-bit words (an odd last byte padded with zero), not yet folded.
fn ones_sum(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u64 = (&mut chunks)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::shared::model::Timestamp;

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const FIN: u8 = 0x01;
    const RST: u8 = 0x04;

    fn tcp(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&40_000u16.to_be_bytes());
        t.extend_from_slice(&443u16.to_be_bytes());
        t.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        t.extend_from_slice(&0x5566_7788u32.to_be_bytes());
        // Data offset 6: one 4-byte option (MSS) that must not become payload.
        t.extend_from_slice(&[6 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(&[2, 4, 0x05, 0xb4]);
        t.extend_from_slice(payload);
        t
    }

    const V4_SRC: [u8; 4] = [192, 0, 2, 1];
    const V4_DST: [u8; 4] = [192, 0, 2, 2];
    const V6_DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    /// `segment` with its TCP checksum filled in, as a NIC would on the wire.
    fn summed(src: IpAddr, dst: IpAddr, segment: &[u8]) -> Vec<u8> {
        let mut segment = segment.to_vec();
        if segment.len() < 20 {
            return segment;
        }
        segment[16..18].copy_from_slice(&[0, 0]);
        let pseudo = |a: &IpAddr| match a {
            IpAddr::V4(a) => ones_sum(&a.octets()),
            IpAddr::V6(a) => ones_sum(&a.octets()),
        };
        let len = segment.len() as u64;
        let sum = pseudo(&src) + pseudo(&dst) + 6 + (len >> 16) + (len & 0xffff);
        let check = !fold(sum + ones_sum(&segment));
        segment[16..18].copy_from_slice(&check.to_be_bytes());
        segment
    }

    /// IPv4 packet; `fragment` is the flags/fragment-offset field. A TCP payload gets its
    /// checksum.
    fn ipv4_with(protocol: u8, fragment: u16, payload: &[u8]) -> Vec<u8> {
        let payload = &if protocol == 6 {
            summed(V4_SRC.into(), V4_DST.into(), payload)
        } else {
            payload.to_vec()
        };
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&fragment.to_be_bytes());
        p.extend_from_slice(&[64, protocol, 0, 0]);
        p.extend_from_slice(&V4_SRC);
        p.extend_from_slice(&V4_DST);
        p.extend_from_slice(payload);
        p
    }

    fn ipv4(payload: &[u8]) -> Vec<u8> {
        ipv4_with(6, 0x4000, payload)
    }

    /// IPv6 packet with an optional hop-by-hop options header in front of `payload`.
    fn ipv6(hop_by_hop: bool, next: u8, payload: &[u8]) -> Vec<u8> {
        let payload = &if next == 6 {
            summed(Ipv6Addr::LOCALHOST.into(), V6_DST.into(), payload)
        } else {
            payload.to_vec()
        };
        let mut body = Vec::new();
        let first = if hop_by_hop {
            body.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            0
        } else {
            next
        };
        body.extend_from_slice(payload);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(body.len() as u16).to_be_bytes());
        p.extend_from_slice(&[first, 64]);
        p.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        p.extend_from_slice(&V6_DST.octets());
        p.extend_from_slice(&body);
        p
    }

    fn ethernet(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        for tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0, 42]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn decode_one<'a>(link: LinkType, data: &'a [u8]) -> (Option<TcpSegment<'a>>, DecodeStats) {
        let mut stats = DecodeStats::default();
        let frame = Frame {
            ts: Timestamp::from_nanos(42),
            link,
            data,
        };
        (decode(&frame, &mut stats), stats)
    }

    fn assert_payload(link: LinkType, frame: &[u8], payload: &[u8]) {
        let (segment, stats) = decode_one(link, frame);
        let segment = segment.unwrap_or_else(|| panic!("{link:?}: no segment, {stats:?}"));
        assert_eq!(segment.payload, payload, "{link:?}");
        assert_eq!(stats.tcp_segments, 1);
    }

    #[test]
    fn ethernet_ipv4_tcp_becomes_a_segment_with_every_field() {
        let frame = ethernet(&[], ETHERTYPE_IPV4, &ipv4(&tcp(ACK | FIN, b"hello")));
        let (segment, stats) = decode_one(LinkType::ETHERNET, &frame);
        let segment = segment.expect("segment");
        assert_eq!(segment.ts, Timestamp::from_nanos(42));
        assert_eq!(segment.src.ip, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(segment.src.port, 40_000);
        assert_eq!(segment.dst.ip, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(segment.dst.port, 443);
        assert_eq!(segment.seq, 0x1122_3344);
        assert_eq!(segment.ack, Some(0x5566_7788));
        assert_eq!(
            segment.flags,
            TcpFlags {
                syn: false,
                ack: true,
                fin: true,
                rst: false
            }
        );
        assert_eq!(segment.payload, b"hello");
        assert_eq!(stats.truncated_frames, 0);
    }

    #[test]
    fn ack_number_is_absent_without_the_ack_flag() {
        let frame = ipv4(&tcp(SYN, b""));
        let (segment, _) = decode_one(LinkType::RAW, &frame);
        let segment = segment.expect("segment");
        assert_eq!(segment.ack, None);
        assert!(segment.flags.syn && !segment.flags.ack);
        let frame = ipv4(&tcp(RST, b""));
        assert!(
            decode_one(LinkType::RAW, &frame)
                .0
                .expect("segment")
                .flags
                .rst
        );
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = ethernet(&[], ETHERTYPE_IPV4, &ipv4(&tcp(ACK, b"")));
        frame.resize(60, 0xee);
        assert_payload(LinkType::ETHERNET, &frame, b"");
        let mut frame = ethernet(&[], ETHERTYPE_IPV4, &ipv4(&tcp(ACK, b"ab")));
        frame.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_payload(LinkType::ETHERNET, &frame, b"ab");
    }

    #[test]
    fn vlan_and_qinq_tags_are_skipped() {
        let packet = ipv4(&tcp(ACK, b"tagged"));
        for tags in [
            &[ETHERTYPE_VLAN][..],
            &[ETHERTYPE_QINQ, ETHERTYPE_VLAN],
            &[ETHERTYPE_QINQ_OLD, ETHERTYPE_VLAN],
        ] {
            let frame = ethernet(tags, ETHERTYPE_IPV4, &packet);
            assert_payload(LinkType::ETHERNET, &frame, b"tagged");
        }
    }

    #[test]
    fn linux_cooked_headers_are_skipped() {
        let packet = ipv6(false, 6, &tcp(ACK, b"v6"));
        let mut sll = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
        sll.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        sll.extend_from_slice(&packet);
        assert_payload(LinkType::LINUX_SLL, &sll, b"v6");

        let mut sll2 = ETHERTYPE_IPV6.to_be_bytes().to_vec();
        sll2.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0]);
        sll2.extend_from_slice(&packet);
        assert_payload(LinkType::LINUX_SLL2, &sll2, b"v6");
    }

    #[test]
    fn loopback_address_families_are_read_in_either_byte_order() {
        let v4 = ipv4(&tcp(ACK, b"four"));
        let v6 = ipv6(false, 6, &tcp(ACK, b"six"));
        for (family, packet, payload) in [
            (2u32, &v4, &b"four"[..]),
            (30, &v6, b"six"),
            (10, &v6, b"six"),
        ] {
            for header in [family.to_le_bytes(), family.to_be_bytes()] {
                let frame = [&header[..], packet].concat();
                assert_payload(LinkType::NULL, &frame, payload);
            }
            let frame = [&family.to_be_bytes()[..], packet].concat();
            assert_payload(LinkType::LOOP, &frame, payload);
        }
        let frame = [&7u32.to_be_bytes()[..], &v4].concat();
        assert_eq!(decode_one(LinkType::LOOP, &frame).1.non_ip, 1);
    }

    #[test]
    fn raw_ip_link_types_carry_ipv4_and_ipv6() {
        let v4 = ipv4(&tcp(ACK, b"raw4"));
        let v6 = ipv6(false, 6, &tcp(ACK, b"raw6"));
        for link in [LinkType::RAW, LinkType::RAW_BSD, LinkType::RAW_OPENBSD] {
            assert_payload(link, &v4, b"raw4");
            assert_payload(link, &v6, b"raw6");
        }
        assert_payload(LinkType::IPV4, &v4, b"raw4");
        assert_payload(LinkType::IPV6, &v6, b"raw6");
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let frame = ethernet(
            &[],
            ETHERTYPE_IPV6,
            &ipv6(true, 6, &tcp(ACK, b"after hop-by-hop")),
        );
        let (segment, _) = decode_one(LinkType::ETHERNET, &frame);
        let segment = segment.expect("segment");
        assert_eq!(segment.payload, b"after hop-by-hop");
        assert_eq!(segment.src.ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn snap_length_cut_delivers_the_captured_payload_and_counts_it() {
        let frame = ethernet(&[], ETHERTYPE_IPV4, &ipv4(&tcp(ACK, b"0123456789")));
        let cut = &frame[..frame.len() - 4];
        let (segment, stats) = decode_one(LinkType::ETHERNET, cut);
        assert_eq!(segment.expect("segment").payload, b"012345");
        assert_eq!(stats.truncated_frames, 1);
        assert_eq!(stats.tcp_segments, 1);
    }

    #[test]
    fn frames_without_a_usable_segment_are_counted_by_reason() {
        let mut stats = DecodeStats::default();
        let udp = ipv4_with(17, 0, &[0; 8]);
        let fragment = ipv4_with(6, 0x2000, &tcp(ACK, b"first fragment"));
        let v6_fragment = ipv6(false, 44, &[6, 0, 0, 1, 0, 0, 0, 1]);
        let mut bad_ihl = ipv4(&tcp(ACK, b""));
        bad_ihl[0] = 0x43;
        let arp = ethernet(&[], 0x0806, &[0; 28]);
        let cases: [(LinkType, Vec<u8>); 8] = [
            (LinkType::RAW, udp),
            (LinkType::RAW, fragment),
            (LinkType::RAW, v6_fragment),
            (LinkType::RAW, bad_ihl),
            (LinkType::ETHERNET, arp),
            (LinkType(147), ipv4(&tcp(ACK, b""))),
            (LinkType::ETHERNET, vec![0; 10]),
            (LinkType::RAW, ipv4(&tcp(ACK, b""))[..30].to_vec()),
        ];
        for (link, data) in &cases {
            let frame = Frame {
                ts: Timestamp::default(),
                link: *link,
                data,
            };
            assert!(decode(&frame, &mut stats).is_none(), "{link:?} {data:?}");
        }
        assert_eq!(
            stats,
            DecodeStats {
                frames: 8,
                non_tcp: 1,
                ip_fragments: 2,
                malformed: 1,
                non_ip: 1,
                unsupported_link: 1,
                truncated_headers: 2,
                ..DecodeStats::default()
            }
        );
    }

    #[test]
    fn every_prefix_of_a_frame_decodes_without_panicking() {
        let frames = [
            (
                LinkType::ETHERNET,
                ethernet(
                    &[ETHERTYPE_VLAN],
                    ETHERTYPE_IPV6,
                    &ipv6(true, 6, &tcp(ACK, b"xyz")),
                ),
            ),
            (
                LinkType::LINUX_SLL2,
                [
                    &ETHERTYPE_IPV4.to_be_bytes()[..],
                    &[0; 18],
                    &ipv4(&tcp(ACK, b"xyz")),
                ]
                .concat(),
            ),
            (
                LinkType::NULL,
                [&2u32.to_le_bytes()[..], &ipv4(&tcp(ACK, b"xyz"))].concat(),
            ),
        ];
        let mut stats = DecodeStats::default();
        for (link, data) in &frames {
            for end in 0..=data.len() {
                let frame = Frame {
                    ts: Timestamp::default(),
                    link: *link,
                    data: &data[..end],
                };
                let _ = decode(&frame, &mut stats);
            }
            assert_payload(*link, data, b"xyz");
        }
        let rejected = stats.frames - stats.tcp_segments;
        assert_eq!(
            rejected,
            stats.truncated_headers + stats.malformed + stats.non_ip
        );
    }

    /// Sets a built packet's TCP checksum field (the TCP header starts at `tcp_at`).
    fn with_check(mut packet: Vec<u8>, tcp_at: usize, check: u16) -> Vec<u8> {
        packet[tcp_at + 16..tcp_at + 18].copy_from_slice(&check.to_be_bytes());
        packet
    }

    #[test]
    fn a_segment_with_a_wrong_checksum_is_dropped_and_counted() {
        let right = ipv4(&tcp(ACK, b"token=decoy"));
        let check = u16::from_be_bytes([right[36], right[37]]);
        let v6 = ipv6(false, 6, &tcp(ACK, b"token=decoy"));
        let v6_check = u16::from_be_bytes([v6[56], v6[57]]);
        let mut stats = DecodeStats::default();
        for data in [
            with_check(right.clone(), 20, check ^ 0x0100),
            with_check(v6, 40, v6_check.wrapping_add(1)),
        ] {
            let frame = Frame {
                ts: Timestamp::default(),
                link: LinkType::RAW,
                data: &data,
            };
            assert!(decode(&frame, &mut stats).is_none());
        }
        assert_eq!(stats.checksum_bad, 2);
        assert_eq!(stats.tcp_segments, 0);
        // A flipped payload bit with the header's checksum kept is as bad.
        let mut flipped = right;
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode_one(LinkType::RAW, &flipped).1.checksum_bad, 1);
    }

    #[test]
    fn a_pseudo_header_only_checksum_from_offload_is_accepted_and_counted() {
        let segment = tcp(ACK, b"sent by this host");
        let len = segment.len() as u64;
        let pseudo = |len: u64| {
            fold(ones_sum(&V4_SRC) + ones_sum(&V4_DST) + 6 + (len >> 16) + (len & 0xffff))
        };
        for check in [pseudo(len), pseudo(0)] {
            let packet = with_check(ipv4(&segment), 20, check);
            let (got, stats) = decode_one(LinkType::RAW, &packet);
            assert_eq!(got.expect("segment").payload, b"sent by this host");
            assert_eq!((stats.checksum_offloaded, stats.checksum_bad), (1, 0));
        }
        let (_, stats) = decode_one(LinkType::RAW, &ipv4(&segment));
        assert_eq!((stats.checksum_offloaded, stats.checksum_bad), (0, 0));
    }
}

//! Hand-made TCP conversations written as pcap frames (Ethernet, optional 802.1Q VLAN, IPv4 or
//! IPv6). The caller owns every sequence number and timestamp, so a test can reorder, repeat,
//! overlap or drop segments and keep the capture byte-for-byte reproducible.
//! HTTP/REDCap message bodies come from `synth::http`; this module only knows TCP.

pub mod http;

use std::fs::File;
use std::io::BufWriter;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use etherparse::{PacketBuilder, VlanId};
use pcap_file::pcap::{PcapPacket, PcapWriter};

/// The segment size a NIC capture shows for a 1500-byte MTU with TCP timestamps.
pub const NIC_MSS: usize = 1448;

const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Which end of the conversation sent a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        }
    }
}

/// One TCP segment before it is framed; tests may edit any field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub side: Side,
    pub seq: u32,
    pub ack: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
}

/// A TCP connection between two endpoints that tracks each side's next sequence number.
#[derive(Debug, Clone)]
pub struct Conversation {
    client: SocketAddr,
    server: SocketAddr,
    vlan: Option<u16>,
    mss: usize,
    next_seq: [u32; 2],
}

impl Conversation {
    /// A conversation with deterministic initial sequence numbers derived from the ports.
    pub fn new(client: SocketAddr, server: SocketAddr) -> Conversation {
        let isn = |port: u16, salt: u32| {
            (u32::from(port))
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt)
        };
        Conversation {
            client,
            server,
            vlan: None,
            mss: NIC_MSS,
            next_seq: [isn(client.port(), 17), isn(server.port(), 991)],
        }
    }

    /// Sets both initial sequence numbers (e.g. near u32::MAX to test wrap-around).
    pub fn with_isn(mut self, client_isn: u32, server_isn: u32) -> Conversation {
        self.next_seq = [client_isn, server_isn];
        self
    }

    pub fn with_vlan(mut self, vlan_id: u16) -> Conversation {
        self.vlan = Some(vlan_id);
        self
    }

    /// Largest payload per segment produced by `data`.
    pub fn with_mss(mut self, mss: usize) -> Conversation {
        self.mss = mss.max(1);
        self
    }

    pub fn client(&self) -> SocketAddr {
        self.client
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The sequence number `side` will use for its next byte.
    pub fn next_seq(&self, side: Side) -> u32 {
        self.next_seq[side.index()]
    }

    /// SYN, SYN-ACK, ACK.
    pub fn handshake(&mut self) -> Vec<Segment> {
        let syn = Segment {
            syn: true,
            ack: 0,
            ..self.bare(Side::Client)
        };
        self.advance(Side::Client, 1);
        let syn_ack = Segment {
            syn: true,
            ..self.bare(Side::Server)
        };
        self.advance(Side::Server, 1);
        vec![syn, syn_ack, self.bare(Side::Client)]
    }

    /// `bytes` from `side`, cut into segments of at most the conversation's MSS.
    pub fn data(&mut self, side: Side, bytes: &[u8]) -> Vec<Segment> {
        self.data_in(side, bytes, self.mss)
    }

    /// `bytes` from `side`, cut into segments of at most `size` bytes.
    pub fn data_in(&mut self, side: Side, bytes: &[u8], size: usize) -> Vec<Segment> {
        let mut out = Vec::with_capacity(bytes.len() / size.max(1) + 1);
        self.data_into(side, bytes, size, &mut out);
        out
    }

    /// Like `data_in`, appending to `out` (no intermediate vector for the generator).
    pub fn data_into(&mut self, side: Side, bytes: &[u8], size: usize, out: &mut Vec<Segment>) {
        for piece in bytes.chunks(size.max(1)) {
            let seg = self.segment(side, self.next_seq(side), piece);
            self.advance(side, piece.len());
            out.push(seg);
        }
    }

    /// A data segment at an explicit sequence number; does not move the conversation on.
    pub fn segment(&self, side: Side, seq: u32, payload: &[u8]) -> Segment {
        Segment {
            seq,
            payload: payload.to_vec(),
            ..self.bare(side)
        }
    }

    /// A pure ACK from `side`.
    pub fn ack(&self, side: Side) -> Segment {
        self.bare(side)
    }

    /// FIN from `side` (consumes one sequence number).
    pub fn fin(&mut self, side: Side) -> Segment {
        let seg = Segment {
            fin: true,
            ..self.bare(side)
        };
        self.advance(side, 1);
        seg
    }

    /// RST from `side`.
    pub fn rst(&self, side: Side) -> Segment {
        Segment {
            rst: true,
            ..self.bare(side)
        }
    }

    /// Client FIN, server FIN, client ACK.
    pub fn close(&mut self) -> Vec<Segment> {
        let a = self.fin(Side::Client);
        let b = self.fin(Side::Server);
        vec![a, b, self.ack(Side::Client)]
    }

    /// Moves `side`'s sequence number on without emitting anything: the bytes were "lost"
    /// before the capture point (a gap the analyser must survive).
    pub fn skip(&mut self, side: Side, bytes: usize) {
        self.advance(side, bytes);
    }

    fn bare(&self, side: Side) -> Segment {
        Segment {
            side,
            seq: self.next_seq(side),
            ack: self.next_seq(side.other()),
            syn: false,
            fin: false,
            rst: false,
            payload: Vec::new(),
        }
    }

    fn advance(&mut self, side: Side, by: usize) {
        let seq = &mut self.next_seq[side.index()];
        *seq = seq.wrapping_add(by as u32);
    }

    /// Serialises `seg` as an Ethernet frame into `buf` (cleared first).
    pub fn frame(&self, seg: &Segment, buf: &mut Vec<u8>) -> Result<()> {
        let (src, dst, src_mac, dst_mac) = match seg.side {
            Side::Client => (self.client, self.server, CLIENT_MAC, SERVER_MAC),
            Side::Server => (self.server, self.client, SERVER_MAC, CLIENT_MAC),
        };
        let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
        let vlan = match self.vlan {
            Some(id) => Some(VlanId::try_new(id).context("VLAN id above 4095")?),
            None => None,
        };
        let ip = match (vlan, src.ip(), dst.ip()) {
            (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => {
                eth.single_vlan(v).ipv4(s.octets(), d.octets(), 64)
            }
            (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => {
                eth.single_vlan(v).ipv6(s.octets(), d.octets(), 64)
            }
            _ => bail!(
                "client {} and server {} differ in address family",
                self.client,
                self.server
            ),
        };
        let mut tcp = ip.tcp(src.port(), dst.port(), seg.seq, 65535);
        // Only the opening SYN carries no ACK.
        if !(seg.syn && seg.side == Side::Client) {
            tcp = tcp.ack(seg.ack);
        }
        if seg.syn {
            tcp = tcp.syn();
        }
        if seg.fin {
            tcp = tcp.fin();
        }
        if seg.rst {
            tcp = tcp.rst();
        }
        if !seg.payload.is_empty() {
            tcp = tcp.psh();
        }
        buf.clear();
        buf.reserve(tcp.size(seg.payload.len()));
        tcp.write(buf, &seg.payload).context("building a frame")?;
        Ok(())
    }
}

/// The same bytes, delivered badly: some neighbouring data segments swapped and the first one
/// retransmitted, some followed by an overlapping retransmission (tail of one segment + head
/// of the next). A correct reassembler yields exactly the stream of `segs`.
pub fn mangle(conv: &Conversation, segs: &[Segment]) -> Vec<Segment> {
    let mut out = Vec::with_capacity(segs.len() * 2);
    let mut i = 0;
    while i < segs.len() {
        let seg = &segs[i];
        let next = segs
            .get(i + 1)
            .filter(|n| !seg.payload.is_empty() && !n.payload.is_empty() && n.side == seg.side);
        match next {
            Some(next) if i % 3 == 0 => {
                out.extend([next.clone(), seg.clone(), seg.clone()]);
                i += 2;
            }
            Some(next) if i % 5 == 1 => {
                let half = seg.payload.len() / 2;
                let mut overlap = seg.payload[half..].to_vec();
                overlap.extend_from_slice(&next.payload[..next.payload.len() / 2]);
                let retransmit =
                    conv.segment(seg.side, seg.seq.wrapping_add(half as u32), &overlap);
                out.extend([seg.clone(), retransmit, next.clone()]);
                i += 2;
            }
            _ => {
                out.push(seg.clone());
                i += 1;
            }
        }
    }
    out
}

/// A pcap file being written (Ethernet link type, microsecond timestamps).
pub struct PcapOut {
    writer: PcapWriter<BufWriter<File>>,
    frame: Vec<u8>,
    packets: u64,
    bytes: u64,
}

impl PcapOut {
    pub fn create(path: &Path) -> Result<PcapOut> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let writer =
            PcapWriter::new(BufWriter::with_capacity(1 << 20, file)).context("pcap header")?;
        Ok(PcapOut {
            writer,
            frame: Vec::with_capacity(2048),
            packets: 0,
            bytes: 24,
        })
    }

    /// Writes one segment of `conv` captured at `ts` (seconds since the epoch).
    pub fn write(&mut self, conv: &Conversation, seg: &Segment, ts: f64) -> Result<()> {
        conv.frame(seg, &mut self.frame)?;
        let len = u32::try_from(self.frame.len()).context("frame too large")?;
        let ts = Duration::from_secs_f64(ts.max(0.0));
        self.writer
            .write_packet(&PcapPacket::new(ts, len, &self.frame))
            .context("writing a packet")?;
        self.packets += 1;
        self.bytes += 16 + u64::from(len);
        Ok(())
    }

    /// Writes `segs` in order, the first at `start`, each `step` seconds after the previous;
    /// returns the time after the last one.
    pub fn write_all(
        &mut self,
        conv: &Conversation,
        segs: &[Segment],
        start: f64,
        step: f64,
    ) -> Result<f64> {
        let mut ts = start;
        for seg in segs {
            self.write(conv, seg, ts)?;
            ts += step;
        }
        Ok(ts)
    }

    /// One complete keep-alive-less exchange on `conv`: handshake, `request`, `response`, close.
    /// Packets are 100 µs apart from `start`; returns the time after the last one.
    pub fn write_exchange(
        &mut self,
        conv: &mut Conversation,
        start: f64,
        request: &[u8],
        response: &[u8],
    ) -> Result<f64> {
        let mut segs = conv.handshake();
        segs.extend(conv.data(Side::Client, request));
        segs.extend(conv.data(Side::Server, response));
        segs.extend(conv.close());
        self.write_all(conv, &segs, start, 0.0001)
    }

    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes in the file so far (header included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flushes the file.
    pub fn finish(self) -> Result<()> {
        let mut inner = self.writer.into_writer();
        std::io::Write::flush(&mut inner).context("flushing the pcap")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv() -> Conversation {
        Conversation::new(
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        )
    }

    #[test]
    fn data_is_cut_at_the_mss_and_sequence_numbers_follow_the_bytes() {
        let mut c = conv().with_mss(10);
        c.handshake();
        let start = c.next_seq(Side::Client);
        let segs = c.data(Side::Client, &[7u8; 25]);
        assert_eq!(
            segs.iter().map(|s| s.payload.len()).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(segs[1].seq, start.wrapping_add(10));
        assert_eq!(c.next_seq(Side::Client), start.wrapping_add(25));
        assert_eq!(segs[0].ack, c.next_seq(Side::Server));
    }

    #[test]
    fn frames_parse_back_with_vlan_and_ipv6() {
        let mut c = Conversation::new(
            "[fd00::1]:40000".parse().unwrap(),
            "[fd00::2]:443".parse().unwrap(),
        )
        .with_vlan(42);
        c.handshake();
        let seg = c.data(Side::Client, b"hello").remove(0);
        let mut buf = Vec::new();
        c.frame(&seg, &mut buf).unwrap();
        let parsed = etherparse::SlicedPacket::from_ethernet(&buf).unwrap();
        assert!(parsed.vlan().is_some());
        match parsed.transport {
            Some(etherparse::TransportSlice::Tcp(tcp)) => {
                assert_eq!(tcp.payload(), b"hello");
                assert_eq!(tcp.sequence_number(), seg.seq);
                assert_eq!(tcp.destination_port(), 443);
            }
            other => panic!("not TCP: {other:?}"),
        }
    }
}

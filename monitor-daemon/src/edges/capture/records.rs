//! The ring's records as TCP segments: the TC probe's [`SegmentEvent`]s carry real segments
//! ([`segment_from_record`]); the TLS uprobes' records become segments of synthetic connections
//! ([`segments_from_record`]). Kernel times become wall-clock times through [`KernelClock`].
//!
//! For TLS, a connection
//! (process, `SSL*`, start time) becomes a TCP connection between two addresses of the IPv6
//! discard prefix `100::/64` ([`is_synthetic`] tells them apart), with sequence numbers counted
//! from the plaintext bytes, so that reassembly, HTTP and REDCap extraction work unchanged.
//! The ring reader ([`super::kernel`]) feeds records in; loading and attaching the programs is
//! [`super::kernel`]'s and [`super::tls`]'s job. Never trusts a length from the kernel unchecked; the peers' addresses
//! come from `/proc` when it can be read.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use monitor_common::{
    DIRECTION_CLIENT_TO_SERVER, DIRECTION_SERVER_TO_CLIENT, FAMILY_IPV4, FAMILY_IPV6, FAMILY_TLS,
    NO_FD, SEGMENT_EVENT_LEN, SegmentEvent, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TlsEvent,
};

use crate::shared::model::{Endpoint, TcpFlags, TcpSegment, Timestamp};

/// The server end of every synthetic TLS connection: `[100::]:443`.
const SERVER: Endpoint = Endpoint {
    ip: IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0)),
    port: 443,
};
/// The client port of every synthetic TLS connection (the address tells them apart).
const CLIENT_PORT: u16 = 49152;
/// Whether `endpoint` is one end of a synthetic TLS connection (an address in `100::/64`,
/// which RFC 6666 reserves for discarding: no real packet carries it).
pub fn is_synthetic(endpoint: &Endpoint) -> bool {
    matches!(endpoint.ip, IpAddr::V6(ip) if ip.segments()[..4] == [0x100, 0, 0, 0])
}

/// Whether a ring-buffer record is a [`TlsEvent`] (rather than a TC segment).
pub(crate) fn is_tls_record(record: &[u8]) -> bool {
    record.len() >= SEGMENT_EVENT_LEN
        && record.get(std::mem::offset_of!(TlsEvent, family)) == Some(&FAMILY_TLS)
}

/// One TLS record → the segments of its synthetic connection: one for data, two payload-less
/// FINs (one per direction) for an `SSL_free`. `None` when the record does not make sense.
///
/// Sequence numbers: byte `o` of a direction is at `o + 1`; the event that started tracking
/// carries SYN at 0, so the client is known without a port hint.
pub(crate) fn segments_from_record<'a>(
    record: &'a [u8],
    clock: &KernelClock,
    peers: &mut TlsPeers,
    still_tracked: &dyn Fn(&TlsEvent) -> bool,
) -> Option<[Option<TcpSegment<'a>>; 2]> {
    let header = record.get(..SEGMENT_EVENT_LEN)?;
    // SAFETY: `header` has exactly size_of::<TlsEvent>() bytes and every bit pattern is a valid
    // TlsEvent (integers and byte arrays only).
    let event: TlsEvent = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let payload = record.get(SEGMENT_EVENT_LEN..)?;
    if event.family != FAMILY_TLS || payload.len() != usize::try_from(event.copied).ok()? {
        return None;
    }
    if event.offset.checked_add(event.copied)? > event.call_len {
        return None;
    }
    let (client, server) = peers.ends(&event, still_tracked);
    let ts = clock.timestamp(event.ktime_ns);
    let segment = |src, dst, seq: u32, flags, payload| TcpSegment {
        ts,
        src,
        dst,
        seq,
        ack: None,
        flags,
        payload,
        // Every direction's first byte is at 1: bytes lost before the first event seen are a gap.
        stream_start: Some(1),
    };
    if event.flags & TCP_FIN != 0 {
        if !payload.is_empty() {
            return None;
        }
        peers.forget(&event);
        let fin = TcpFlags {
            fin: true,
            ..TcpFlags::default()
        };
        return Some([
            Some(segment(
                client,
                server,
                event.stream_offset.wrapping_add(1),
                fin,
                payload,
            )),
            Some(segment(
                server,
                client,
                event.peer_offset.wrapping_add(1),
                fin,
                payload,
            )),
        ]);
    }
    let (src, dst) = match event.direction {
        DIRECTION_CLIENT_TO_SERVER => (client, server),
        DIRECTION_SERVER_TO_CLIENT => (server, client),
        _ => return None,
    };
    let syn = event.flags & TCP_SYN != 0;
    if syn && (event.direction != DIRECTION_CLIENT_TO_SERVER || event.stream_offset != 0) {
        return None;
    }
    let flags = TcpFlags {
        syn,
        ..TcpFlags::default()
    };
    // With SYN the data starts right after the SYN's own number (0), like a TFO segment.
    let seq = if syn {
        0
    } else {
        event.stream_offset.wrapping_add(1)
    };
    Some([Some(segment(src, dst, seq, flags, payload)), None])
}

/// The ends of each TLS connection whose client address was found: the real client, and a
/// synthetic server (`[100::TGID]:PORT`, the port the web server accepted it on) so that the
/// 4-tuple stays apart from the packets' own. Bounded: past `capacity` connections, new ones get
/// synthetic clients (an empty address), never a wrong one.
pub(crate) struct TlsPeers {
    known: std::collections::HashMap<(u32, u64, u64), (Endpoint, Endpoint)>,
    capacity: usize,
    proc_root: PathBuf,
    /// Connections whose client address was found, and not found (the socket was unknown or
    /// already gone).
    pub(crate) found: u64,
    pub(crate) not_found: u64,
}

impl TlsPeers {
    pub(crate) fn new(capacity: usize) -> TlsPeers {
        TlsPeers {
            known: std::collections::HashMap::new(),
            capacity,
            proc_root: PathBuf::from("/proc"),
            found: 0,
            not_found: 0,
        }
    }

    /// (client, server) of the event's connection. On the event that started tracking, the
    /// socket's peer is looked up: `/proc/TGID/fd/FD` names the socket, which is then taken
    /// only if the kernel still tracks the same connection (`still_tracked`: the web server
    /// calls `SSL_free` before it closes the socket, so the descriptor was not yet reused),
    /// and its addresses are read from `/proc/TGID/net/tcp{,6}` by inode.
    fn ends(
        &mut self,
        event: &TlsEvent,
        still_tracked: &dyn Fn(&TlsEvent) -> bool,
    ) -> (Endpoint, Endpoint) {
        let id = (event.tgid, event.ssl, event.conn_since_ns);
        if let Some(ends) = self.known.get(&id) {
            return *ends;
        }
        let synthetic = (client_endpoint(event), SERVER);
        if event.flags & TCP_SYN == 0 || event.fd == NO_FD {
            return synthetic;
        }
        let resolved = if self.known.len() < self.capacity
            && let Some(inode) = socket_inode(&self.proc_root, event.tgid, event.fd)
            && still_tracked(event)
            && let Some(ends) = socket_ends(&self.proc_root, event.tgid, inode)
        {
            Some(ends)
        } else {
            None
        };
        let Some(ends) = resolved.map(|(local, remote)| {
            let server = Endpoint {
                ip: IpAddr::V6(Ipv6Addr::new(
                    0x100,
                    0,
                    0,
                    0,
                    0,
                    0,
                    (event.tgid >> 16) as u16,
                    event.tgid as u16,
                )),
                port: local.port,
            };
            (remote, server)
        }) else {
            self.not_found += 1;
            return synthetic;
        };
        self.found += 1;
        self.known.insert(id, ends);
        ends
    }

    fn forget(&mut self, event: &TlsEvent) {
        self.known
            .remove(&(event.tgid, event.ssl, event.conn_since_ns));
    }
}

/// The inode of socket `fd` of process `tgid` (`socket:[INODE]`).
fn socket_inode(proc_root: &Path, tgid: u32, fd: u32) -> Option<u64> {
    let link = std::fs::read_link(
        proc_root
            .join(tgid.to_string())
            .join("fd")
            .join(fd.to_string()),
    )
    .ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// (local, remote) of the TCP socket with `inode`, from the process's own network namespace.
fn socket_ends(proc_root: &Path, tgid: u32, inode: u64) -> Option<(Endpoint, Endpoint)> {
    let net = proc_root.join(tgid.to_string()).join("net");
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(net.join(table)).ok()?;
        text.lines()
            .skip(1)
            .find_map(|line| tcp_line_ends(line, inode))
    })
}

/// A `/proc/net/tcp{,6}` line's (local, remote) when its inode is `inode`.
fn tcp_line_ends(line: &str, inode: u64) -> Option<(Endpoint, Endpoint)> {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    if fields.get(9)?.parse::<u64>().ok()? != inode {
        return None;
    }
    Some((hex_endpoint(fields.get(1)?)?, hex_endpoint(fields.get(2)?)?))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host byte order.
fn hex_endpoint(text: &str) -> Option<Endpoint> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(std::net::Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; packets say a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(Endpoint { ip, port })
}

/// `100::/64` plus 64 bits that stand for (process, `SSL*`, tracking start).
fn client_endpoint(event: &TlsEvent) -> Endpoint {
    let mut hasher = std::hash::DefaultHasher::new();
    (event.tgid, event.ssl, event.conn_since_ns).hash(&mut hasher);
    // Never all zero: that is the server's address.
    let id = hasher.finish() | 1;
    let [a, b, c, d] = [
        (id >> 48) as u16,
        (id >> 32) as u16,
        (id >> 16) as u16,
        id as u16,
    ];
    Endpoint {
        ip: IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, a, b, c, d)),
        port: CLIENT_PORT,
    }
}

/// Kernel time (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to wall-clock time, by an offset measured
/// once: the pipeline's windows need epoch time, and reading the wall clock per event would cost
/// a syscall and let a clock step reorder events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KernelClock {
    realtime_minus_monotonic: i128,
}

impl KernelClock {
    /// A clock with a known offset (for tests and fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) const fn offset(realtime_minus_monotonic: i128) -> Self {
        Self {
            realtime_minus_monotonic,
        }
    }

    pub(crate) fn measure() -> Self {
        // The narrowest of a few monotonic/realtime/monotonic sandwiches bounds the error.
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..5 {
            let before = clock_ns(libc::CLOCK_MONOTONIC);
            let real = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_MONOTONIC);
            let width = after - before;
            let offset = real - (before + after) / 2;
            if best.is_none_or(|(w, _)| width < w) {
                best = Some((width, offset));
            }
        }
        Self {
            realtime_minus_monotonic: best.map_or(0, |(_, offset)| offset),
        }
    }

    pub(crate) fn timestamp(&self, ktime_ns: u64) -> Timestamp {
        let wall = i128::from(ktime_ns) + self.realtime_minus_monotonic;
        Timestamp(wall.clamp(0, i128::from(u64::MAX)) as u64)
    }
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; these clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// One ring-buffer record → a segment borrowing the record's payload, or `None` when the record
/// is not a well-formed [`SegmentEvent`] (wrong size, unknown family/direction, lengths that do
/// not add up).
pub(crate) fn segment_from_record<'a>(
    record: &'a [u8],
    clock: &KernelClock,
) -> Option<TcpSegment<'a>> {
    let header = record.get(..SEGMENT_EVENT_LEN)?;
    // SAFETY: `header` has exactly size_of::<SegmentEvent>() bytes and every bit pattern is a
    // valid SegmentEvent (integers and byte arrays only).
    let event: SegmentEvent = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let copied = usize::try_from(event.copied).ok()?;
    let payload = record.get(SEGMENT_EVENT_LEN..)?;
    if payload.len() != copied {
        return None;
    }
    // Data events lie inside their segment; a SYN/FIN/RST event sits at its end.
    if event.offset.checked_add(event.copied)? > event.segment_len {
        return None;
    }
    let (client_ip, server_ip) = match event.family {
        FAMILY_IPV4 => {
            let [a, b, c, d, ..] = event.client_addr;
            let [e, f, g, h, ..] = event.server_addr;
            (
                IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                IpAddr::V4(Ipv4Addr::new(e, f, g, h)),
            )
        }
        FAMILY_IPV6 => (
            IpAddr::V6(Ipv6Addr::from(event.client_addr)),
            IpAddr::V6(Ipv6Addr::from(event.server_addr)),
        ),
        _ => return None,
    };
    let client = Endpoint {
        ip: client_ip,
        port: event.client_port,
    };
    let server = Endpoint {
        ip: server_ip,
        port: event.server_port,
    };
    let (src, dst) = match event.direction {
        DIRECTION_CLIENT_TO_SERVER => (client, server),
        DIRECTION_SERVER_TO_CLIENT => (server, client),
        _ => return None,
    };
    let flags = event.tcp_flags;
    Some(TcpSegment {
        ts: clock.timestamp(event.ktime_ns),
        src,
        dst,
        seq: event.seq,
        ack: (flags & TCP_ACK != 0).then_some(event.ack),
        flags: TcpFlags {
            syn: flags & TCP_SYN != 0,
            ack: flags & TCP_ACK != 0,
            fin: flags & TCP_FIN != 0,
            rst: flags & TCP_RST != 0,
        },
        payload,
        stream_start: (event.stream_start_known != 0).then_some(event.stream_start),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: KernelClock = KernelClock::offset(1_700_000_000_000_000_000);

    /// The segments of one record, with no client address to be found.
    fn segments(record: &[u8]) -> Option<[Option<TcpSegment<'_>>; 2]> {
        segments_from_record(record, &CLOCK, &mut TlsPeers::new(16), &|_| false)
    }

    fn record(event: &TlsEvent, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; SEGMENT_EVENT_LEN];
        // SAFETY: `bytes` has room for one TlsEvent.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), *event) };
        bytes.extend_from_slice(payload);
        bytes
    }

    fn event(direction: u8, stream_offset: u32, copied: u32) -> TlsEvent {
        TlsEvent {
            ktime_ns: 7_000,
            stream_offset,
            call_len: copied,
            copied,
            ssl: 0x5555_0000_1234,
            tgid: 4242,
            conn_since_ns: 99,
            family: FAMILY_TLS,
            direction,
            ..TlsEvent::default()
        }
    }

    #[test]
    fn the_first_read_opens_a_synthetic_connection_with_a_syn() {
        let mut first = event(DIRECTION_CLIENT_TO_SERVER, 0, 4);
        first.flags = TCP_SYN;
        let bytes = record(&first, b"POST");
        assert!(is_tls_record(&bytes));
        let [Some(seg), None] = segments(&bytes).unwrap() else {
            panic!("one segment expected");
        };
        assert!(seg.flags.syn && !seg.flags.ack);
        assert_eq!(seg.seq, 0);
        assert_eq!(seg.payload, b"POST");
        assert_eq!(seg.dst, SERVER);
        assert!(is_synthetic(&seg.src) && is_synthetic(&seg.dst));
        assert_eq!(seg.ts.0, 1_700_000_000_000_007_000);
    }

    #[test]
    fn later_bytes_are_numbered_by_their_offset_and_replies_go_the_other_way() {
        let bytes = record(&event(DIRECTION_CLIENT_TO_SERVER, 4, 3), b" /a");
        let [Some(read), None] = segments(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(read.seq, 5);
        let bytes = record(&event(DIRECTION_SERVER_TO_CLIENT, 0, 4), b"HTTP");
        let [Some(write), None] = segments(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!((write.src, write.dst), (read.dst, read.src));
        assert_eq!(write.seq, 1);
    }

    #[test]
    fn a_reused_ssl_pointer_is_a_different_connection() {
        let a = event(DIRECTION_CLIENT_TO_SERVER, 0, 0);
        let mut b = a;
        b.conn_since_ns += 1;
        let mut c = a;
        c.tgid += 1;
        let ends: Vec<Endpoint> = [a, b, c].iter().map(client_endpoint).collect();
        assert_ne!(ends[0], ends[1]);
        assert_ne!(ends[0], ends[2]);
        assert_eq!(client_endpoint(&a), ends[0]);
    }

    #[test]
    fn ssl_free_ends_both_directions_at_their_offsets() {
        let mut end = event(DIRECTION_CLIENT_TO_SERVER, 120, 0);
        end.peer_offset = 5000;
        end.flags = TCP_FIN;
        let bytes = record(&end, b"");
        let [Some(client_fin), Some(server_fin)] = segments(&bytes).unwrap() else {
            panic!()
        };
        assert!(client_fin.flags.fin && server_fin.flags.fin);
        assert_eq!(client_fin.seq, 121);
        assert_eq!(server_fin.seq, 5001);
        assert_eq!(client_fin.dst, SERVER);
        assert_eq!(server_fin.src, SERVER);
    }

    #[test]
    fn records_that_do_not_add_up_are_rejected() {
        let e = event(DIRECTION_CLIENT_TO_SERVER, 0, 4);
        assert!(segments(&record(&e, b"POS")).is_none());
        assert!(segments(&record(&e, b"POST!")).is_none());
        let mut beyond = e;
        beyond.offset = 1;
        assert!(segments(&record(&beyond, b"POST")).is_none());
        let mut direction = e;
        direction.direction = 7;
        assert!(segments(&record(&direction, b"POST")).is_none());
        let mut late_syn = e;
        late_syn.flags = TCP_SYN;
        late_syn.stream_offset = 10;
        assert!(segments(&record(&late_syn, b"POST")).is_none());
        let mut fin_with_data = e;
        fin_with_data.flags = TCP_FIN;
        assert!(segments(&record(&fin_with_data, b"POST")).is_none());
        let bytes = record(&e, b"POST");
        assert!(segments(&bytes[..SEGMENT_EVENT_LEN - 1]).is_none());
        assert!(!is_tls_record(&bytes[..SEGMENT_EVENT_LEN - 1]));
    }

    #[test]
    fn proc_net_tcp_lines_give_both_ends_by_inode() {
        let v4 = "   3: 0100000A:01BB 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        let (local, remote) = tcp_line_ends(v4, 4242).unwrap();
        assert_eq!(local.to_string(), "10.0.0.1:443");
        assert_eq!(remote.to_string(), "10.0.0.2:50000");
        assert!(tcp_line_ends(v4, 4243).is_none());
        // A dual-stack listener: the IPv4 client appears as ::ffff:10.0.0.2.
        let mapped = "   0: 0000000000000000FFFF00000100000A:01BB 0000000000000000FFFF00000200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1";
        let (_, remote) = tcp_line_ends(mapped, 77).unwrap();
        assert_eq!(remote.to_string(), "10.0.0.2:50000");
        let v6 = "   0: 00000000000000000000000001000000:01BB 0000FDFD000000000000000001000000:C350 01 0:0 0:0 0 0 0 78 1";
        let (_, remote) = tcp_line_ends(v6, 78).unwrap();
        assert_eq!(remote.to_string(), "[fdfd::1]:50000");
        assert!(hex_endpoint("0100007F").is_none());
        assert!(hex_endpoint("XYZ:01BB").is_none());
    }

    #[test]
    fn the_client_address_is_taken_only_while_the_connection_is_still_tracked() {
        let root = tempfile::tempdir().unwrap();
        let proc = root.path().join("4242");
        std::fs::create_dir_all(proc.join("fd")).unwrap();
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::os::unix::fs::symlink("socket:[9001]", proc.join("fd/7")).unwrap();
        std::fs::write(
            proc.join("net/tcp"),
            "  sl  local_address rem_address   st\n   1: 0100000A:01BB 0200000A:C350 01 0:0 0:0 0 0 0 9001 1\n",
        )
        .unwrap();
        std::fs::write(proc.join("net/tcp6"), "  sl\n").unwrap();
        let mut peers = TlsPeers::new(16);
        peers.proc_root = root.path().to_owned();
        let mut first = event(DIRECTION_CLIENT_TO_SERVER, 0, 4);
        first.tgid = 4242;
        first.flags = TCP_SYN;
        first.fd = 7;
        let bytes = record(&first, b"POST");

        // Freed (and its descriptor possibly reused) before user space looked: no address.
        let [Some(seg), None] =
            segments_from_record(&bytes, &CLOCK, &mut peers, &|_| false).unwrap()
        else {
            panic!()
        };
        assert!(is_synthetic(&seg.src));
        assert_eq!(peers.not_found, 1);

        let mut later = first;
        later.conn_since_ns += 1;
        let bytes = record(&later, b"POST");
        let [Some(seg), None] =
            segments_from_record(&bytes, &CLOCK, &mut peers, &|_| true).unwrap()
        else {
            panic!()
        };
        assert_eq!(seg.src.to_string(), "10.0.0.2:50000");
        assert!(is_synthetic(&seg.dst) && seg.dst.port == 443);
        // The rest of the connection keeps those ends; its end forgets them.
        let mut reply = later;
        reply.flags = 0;
        reply.fd = NO_FD;
        reply.direction = DIRECTION_SERVER_TO_CLIENT;
        let bytes = record(&reply, b"HTTP");
        let [Some(out), None] =
            segments_from_record(&bytes, &CLOCK, &mut peers, &|_| true).unwrap()
        else {
            panic!()
        };
        assert_eq!((out.src, out.dst), (seg.dst, seg.src));
        let mut end = reply;
        end.flags = TCP_FIN;
        end.copied = 0;
        end.call_len = 0;
        segments_from_record(&record(&end, b""), &CLOCK, &mut peers, &|_| true).unwrap();
        assert!(peers.known.is_empty());
    }

    #[test]
    fn real_addresses_are_not_synthetic() {
        let real = |ip: &str| Endpoint {
            ip: ip.parse().unwrap(),
            port: 443,
        };
        assert!(!is_synthetic(&real("10.0.0.1")));
        assert!(!is_synthetic(&real("::1")));
        assert!(!is_synthetic(&real("100:0:0:1::5")));
        assert!(is_synthetic(&real("100::5")));
    }
}

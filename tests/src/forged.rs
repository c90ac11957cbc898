//! Forged traffic for the hostile-input tests (`tc_forged.rs` against the kernel probe,
//! `pcap_forged.rs` against libpcap mode): a real API client that holds its body back until told,
//! clients that slip a forged segment into their own connection, and a flood of forged segments
//! from a spoofed address through a raw socket. The clients are small Python programs run inside
//! a namespace of a [`NamespacePair`]; they speak on stdout, one line per step.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Output, Stdio};

use crate::netns::NamespacePair;

/// The request both clients send: its body (with the token) and its head.
const REQUEST_PY: &str = r#"
import socket, struct, sys, time
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = ("token=%s&content=record&format=json&returnFormat=json" % token).encode()
head = ("POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: %d\r\n\r\n" % len(body)).encode()
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
"#;

/// Reads the answer's status line and prints the status.
const ANSWER_PY: &str = r#"
answer = b""
while b"\r\n\r\n" not in answer:
    answer += s.recv(65536)
print(answer.split(b" ")[1].decode(), flush=True)
s.close()
"#;

/// Sends the head, then finds the sequence number and acknowledgement the client's stack will
/// use next (`nxt`, `ack`) by sniffing its own head segment on its interface.
const SNIFF_NEXT_PY: &str = r#"
ifname = [n for _, n in socket.if_nameindex() if n != "lo"][0]
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sniff.bind((ifname, 0))
lport = s.getsockname()[1]
s.sendall(head)
while True:
    frame = sniff.recv(65535)
    if frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    tcp = ip[ihl:]
    sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
    data = struct.unpack("!H", ip[2:4])[0] - ihl - (tcp[12] >> 4) * 4
    if sport == lport and data > 0:
        nxt = (seq + data) & 0xffffffff
        break
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
"#;

/// Between head and body, a RST in its own connection with the right sequence number and a
/// wrong checksum; prints "rst". After the answer, abandons a second request with a real RST
/// (SO_LINGER 0) and prints "aborted".
const RST_PY: &str = r#"
raw.sendto(struct.pack("!HHIIBBHHH", lport, port, nxt, 0, 5 << 4, 0x04, 0, 0xbeef, 0), (host, 0))
print("rst", flush=True)
time.sleep(0.3)
s.sendall(body)
"#;

const ABORT_PY: &str = r#"
s2 = socket.create_connection((host, port))
s2.sendall(head)
time.sleep(0.2)
s2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s2.close()
print("aborted", flush=True)
"#;

/// Between head and body, a decoy body with argv[4]'s token in the real body's place (same
/// sequence number and length) and a wrong checksum; prints "decoy".
const DECOY_PY: &str = r#"
decoy = sys.argv[4]
fake = ("token=%s&content=record&format=json&returnFormat=json" % decoy).encode()
raw.sendto(struct.pack("!HHIIBBHHH", lport, port, nxt, ack, 5 << 4, 0x18, 65535, 0xbeef, 0) + fake,
           (host, 0))
print("decoy", flush=True)
time.sleep(0.3)
s.sendall(body)
"#;

/// Sends argv[3] forged segments from argv[1] (spoofed) to argv[2]:8080 with right checksums
/// through a raw IP socket: argv[4] `syn`, bare SYNs (one source port each), or `api_start`,
/// the start of an API request with the ACK flag (random source ports).
const FLOOD_PY: &str = r#"
import random, socket, struct, sys
src, dst, n, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
payload = b"POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Length: 40\r\n\r\n" if kind == "api_start" else b""
def csum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total > 0xffff:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
for i in range(n):
    if kind == "syn":
        sport, seq, ack, flags = 1024 + i, random.getrandbits(32), 0, 0x02
    else:
        sport, seq, ack, flags = 1024 + (i * 7919) % 60000, random.getrandbits(32), random.getrandbits(32), 0x18
    tcp = struct.pack("!HHIIBBHHH", sport, 8080, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = saddr + daddr + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, saddr, daddr)
    s.sendto(ip + tcp, (dst, 0))
print(n, flush=True)
"#;

/// A real API call from the client namespace whose head and body leave in two segments: the
/// head at once, the body when [`SplitClient::send_body`] says so.
pub struct SplitClient {
    child: Child,
    answers: BufReader<ChildStdout>,
}

impl SplitClient {
    /// Starts the call to `server_ip:port` with `token`; returns once the head is sent.
    pub fn start(pair: &NamespacePair, server_ip: &str, port: u16, token: &str) -> SplitClient {
        let script = format!(
            "{REQUEST_PY}s.sendall(head)\nprint(\"head\", flush=True)\nsys.stdin.readline()\n\
             s.sendall(body)\n{ANSWER_PY}"
        );
        let mut child = pair
            .exec(&pair.client_ns, "python3")
            .args(["-c", &script, server_ip, &port.to_string(), token])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is needed for the test client");
        let mut answers = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        answers
            .read_line(&mut line)
            .expect("the client's first line");
        assert_eq!(line.trim(), "head");
        SplitClient { child, answers }
    }

    /// Sends the body; returns the answer's status once the client ended well.
    pub fn send_body(mut self) -> String {
        writeln!(self.child.stdin.as_mut().expect("piped stdin")).expect("releasing the body");
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .expect("the answer's status");
        assert!(self.child.wait().expect("client").success());
        line.trim().to_owned()
    }
}

/// A call that slips a forged segment into its own connection between head and body.
#[derive(Clone, Copy, Debug)]
pub enum Forgery<'a> {
    /// A RST with a wrong checksum; then a second request abandoned with a real RST. Prints
    /// `rst`, the status, `aborted`.
    Reset,
    /// A decoy body carrying this token, with a wrong checksum. Prints `decoy`, the status.
    Decoy(&'a str),
}

/// Runs a call with `forgery` from the client namespace to completion; its output.
pub fn forging_client(
    pair: &NamespacePair,
    server_ip: &str,
    port: u16,
    token: &str,
    forgery: Forgery<'_>,
) -> Output {
    let (script, extra) = match forgery {
        Forgery::Reset => (
            format!("{REQUEST_PY}{SNIFF_NEXT_PY}{RST_PY}{ANSWER_PY}{ABORT_PY}"),
            None,
        ),
        Forgery::Decoy(decoy) => (
            format!("{REQUEST_PY}{SNIFF_NEXT_PY}{DECOY_PY}{ANSWER_PY}"),
            Some(decoy),
        ),
    };
    pair.exec(&pair.client_ns, "python3")
        .args(["-c", &script, server_ip, &port.to_string(), token])
        .args(extra)
        .output()
        .expect("python3 is needed for the test client")
}

/// What a flood forges.
#[derive(Clone, Copy, Debug)]
pub enum Flood {
    /// Bare SYNs, no handshake following.
    Syn,
    /// Segments that start like an API request, with the ACK flag, no handshake.
    ApiStart,
}

/// Sends `n` forged segments of `kind` from `spoofed_ip` to `server_ip`:8080 from the client
/// namespace; panics with the script's error when it fails.
pub fn flood(pair: &NamespacePair, kind: Flood, spoofed_ip: &str, server_ip: &str, n: usize) {
    let kind = match kind {
        Flood::Syn => "syn",
        Flood::ApiStart => "api_start",
    };
    let out = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", FLOOD_PY, spoofed_ip, server_ip, &n.to_string(), kind])
        .output()
        .expect("python3 is needed for the flood");
    assert!(
        out.status.success(),
        "the flood failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

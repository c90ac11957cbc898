//! Forged traffic against the real kernel program, the probe attached to the server's veth in a
//! namespace pair and drained into a real [`Pipeline`]: a flood of forged segments that start
//! like an API request (no handshake, from a spoofed address the server cannot answer) must not
//! push a real API connection out of the kernel's flow table while its request is in flight; a
//! forged RST or a decoy body with the right sequence number and a wrong checksum must not end
//! the copy of the request, nor take the real body's place. Needs root; set REDCAP_MONITOR_SKIP_ROOT_TESTS=1 to
//! skip without it.

mod probe_env;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use monitor_tests::require_root;
use probe_env::{SERVER_IP, SERVER_PORT, namespace_pair, spawn_attached_probe};
use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::capture::kernel::{KernelCounters, ProbeConfig};
use redcap_monitor::shared::token::{RawToken, SiteKey};
use redcap_monitor::stages::pipeline::Pipeline;
use redcap_monitor::stages::redcap::ApiCall;

const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";
const DECOY_TOKEN: &str = "FEDCBA9876543210FEDCBA9876543210";
/// A source address the server's namespace has no route back to: it cannot answer (no RST),
/// as with spoofed sources on the internet.
const SPOOFED_IP: &str = "198.51.100.7";
const KEY: [u8; 32] = [5; 32];

/// One API call whose head and body leave in two segments: the head, then (after a line on
/// stdin) the body with the token. Prints "head" after the head, then the answer's status.
const CLIENT_PY: &str = r#"
import socket, sys
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = ("token=%s&content=record&format=json&returnFormat=json" % token).encode()
head = ("POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: %d\r\n\r\n" % len(body)).encode()
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(head)
print("head", flush=True)
sys.stdin.readline()
s.sendall(body)
answer = b""
while b"\r\n\r\n" not in answer:
    answer += s.recv(65536)
print(answer.split(b" ")[1].decode(), flush=True)
s.close()
"#;

/// Sends argv[3] forged TCP segments from argv[1] (a spoofed address, random source ports) to
/// argv[2]:8080, each the start of an API request with the ACK flag and a right checksum,
/// through a raw IP socket.
const FORGER_PY: &str = r#"
import random, socket, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = b"POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Length: 40\r\n\r\n"
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
    sport = 1024 + (i * 7919) % 60000
    seq, ack = random.getrandbits(32), random.getrandbits(32)
    tcp = struct.pack("!HHIIBBHHH", sport, 8080, seq, ack, 5 << 4, 0x18, 65535, 0, 0) + payload
    pseudo = saddr + daddr + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, saddr, daddr)
    s.sendto(ip + tcp, (dst, 0))
print(n, flush=True)
"#;

/// Like [`CLIENT_PY`], but between head and body it forges a RST in its own connection: the
/// sequence number its stack would use (read from its own head segment, sniffed on its
/// interface) and a wrong checksum. Prints "rst" once sent, then the answer's status; then
/// abandons a second request with a real RST (SO_LINGER 0) and prints "aborted".
const RST_CLIENT_PY: &str = r#"
import socket, struct, sys, time
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = ("token=%s&content=record&format=json&returnFormat=json" % token).encode()
head = ("POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: %d\r\n\r\n" % len(body)).encode()
ifname = [n for _, n in socket.if_nameindex() if n != "lo"][0]
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sniff.bind((ifname, 0))
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
lport = s.getsockname()[1]
s.sendall(head)
while True:
    frame = sniff.recv(65535)
    if frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    tcp = ip[ihl:]
    sport, dport, seq = struct.unpack("!HHI", tcp[:8])
    data = struct.unpack("!H", ip[2:4])[0] - ihl - (tcp[12] >> 4) * 4
    if sport == lport and data > 0:
        nxt = (seq + data) & 0xffffffff
        break
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
raw.sendto(struct.pack("!HHIIBBHHH", lport, port, nxt, 0, 5 << 4, 0x04, 0, 0xbeef, 0), (host, 0))
print("rst", flush=True)
time.sleep(0.3)
s.sendall(body)
answer = b""
while b"\r\n\r\n" not in answer:
    answer += s.recv(65536)
print(answer.split(b" ")[1].decode(), flush=True)
s.close()
# A real RST from the client's own stack: a request abandoned after its head.
s2 = socket.create_connection((host, port))
s2.sendall(head)
time.sleep(0.2)
s2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s2.close()
print("aborted", flush=True)
"#;

struct Observed {
    calls: Vec<ApiCall>,
    counters: KernelCounters,
    /// Connections reassembly closed on a RST.
    resets: u64,
}

/// Attaches the probe and feeds every segment into a pipeline until `stop` is set.
fn observe(
    pair: &monitor_tests::netns::NamespacePair,
    config: ProbeConfig,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Observed> {
    spawn_attached_probe(pair, config, move |mut probe| {
        let mut pipeline = Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes(KEY));
        let mut calls = Vec::new();
        loop {
            let last = stop.load(Ordering::Relaxed);
            probe
                .wait_readable(Duration::from_millis(20))
                .expect("poll");
            probe.drain(&mut |segment| {
                pipeline.push_segment(segment, &mut |verdict| calls.push(verdict.call))
            });
            if last {
                break;
            }
        }
        pipeline.finish(&mut |verdict| calls.push(verdict.call));
        Observed {
            calls,
            counters: probe.counters().expect("counters"),
            resets: pipeline.stats().reassembly.reset_closed,
        }
    })
}

/// The calls that carry [`TOKEN`].
fn real_calls(observed: &Observed) -> Vec<&ApiCall> {
    let fingerprint =
        SiteKey::from_bytes(KEY).fingerprint(&RawToken::parse(TOKEN.as_bytes()).unwrap());
    observed
        .calls
        .iter()
        .filter(|c| c.token.as_ref().is_ok_and(|t| t.fingerprint == fingerprint))
        .collect()
}

#[test]
fn a_flood_of_forged_api_requests_does_not_evict_an_api_connection_in_flight() {
    if !require_root(module_path!()) {
        return;
    }
    const FORGED: usize = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let stop = Arc::new(AtomicBool::new(false));
    // A small table, so that the flood is many times its size.
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        max_flows: 512,
        ..ProbeConfig::default()
    };
    let probe = observe(&pair, config, Arc::clone(&stop));

    let mut client = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", CLIENT_PY, SERVER_IP, &SERVER_PORT.to_string(), TOKEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the test client");
    let mut answers = BufReader::new(client.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    answers
        .read_line(&mut line)
        .expect("the client's first line");
    assert_eq!(line.trim(), "head");
    // The server acknowledges the head: the flow is confirmed.
    thread::sleep(Duration::from_millis(300));

    let forger = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", FORGER_PY, SPOOFED_IP, SERVER_IP, &FORGED.to_string()])
        .output()
        .expect("python3 is needed for the forger");
    assert!(
        forger.status.success(),
        "the forger failed: {}",
        String::from_utf8_lossy(&forger.stderr)
    );

    writeln!(client.stdin.as_mut().expect("piped stdin")).expect("releasing the body");
    line.clear();
    answers.read_line(&mut line).expect("the answer's status");
    assert_eq!(line.trim(), "200", "the server answered the real call");
    assert!(client.wait().expect("client").success());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let observed = probe.join().expect("probe thread");

    let counters = observed.counters;
    eprintln!("{counters:?}");
    let real = real_calls(&observed);
    assert_eq!(
        real.len(),
        1,
        "the real call is reported once: {counters:?}"
    );
    assert!(real[0].complete, "{:?}", real[0]);
    assert_eq!(real[0].status, Some(200));
    assert_eq!(counters.flows_evicted, 0, "{counters:?}");
    assert_eq!(
        counters.flows_confirmed, 1,
        "only the real flow is confirmed: {counters:?}"
    );
    assert!(
        counters.flows_unanswered >= (FORGED - 512) as u64,
        "the flood is counted as unanswered: {counters:?}"
    );
}

#[test]
fn a_forged_reset_with_a_wrong_checksum_does_not_end_the_copy_of_a_request() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        ..ProbeConfig::default()
    };
    let probe = observe(&pair, config, Arc::clone(&stop));
    let output = pair
        .exec(&pair.client_ns, "python3")
        .args([
            "-c",
            RST_CLIENT_PY,
            SERVER_IP,
            &SERVER_PORT.to_string(),
            TOKEN,
        ])
        .output()
        .expect("python3 is needed for the test client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().eq(["rst", "200", "aborted"]),
        "the client: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let observed = probe.join().expect("probe thread");
    let counters = observed.counters;
    let real = real_calls(&observed);
    assert_eq!(
        real.len(),
        1,
        "the real call is reported once: {counters:?}"
    );
    assert!(real[0].complete, "{:?}", real[0]);
    assert_eq!(real[0].status, Some(200));
    assert_eq!(counters.checksum_bad, 1, "{counters:?}");
    // The client stack's own RST passes the check and closes its connection.
    assert_eq!(observed.resets, 1, "{counters:?}");
}

/// Sends head, then a decoy body with [`DECOY_TOKEN`] in the place of the real body (the same
/// sequence number and length) with a wrong checksum, then the real body. Prints "decoy" once
/// the decoy is sent, then the answer's status.
const DECOY_CLIENT_PY: &str = r#"
import socket, struct, sys, time
host, port, token, decoy = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = ("token=%s&content=record&format=json&returnFormat=json" % token).encode()
fake = ("token=%s&content=record&format=json&returnFormat=json" % decoy).encode()
head = ("POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: %d\r\n\r\n" % len(body)).encode()
ifname = [n for _, n in socket.if_nameindex() if n != "lo"][0]
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sniff.bind((ifname, 0))
s = socket.create_connection((host, port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
raw.sendto(struct.pack("!HHIIBBHHH", lport, port, nxt, ack, 5 << 4, 0x18, 65535, 0xbeef, 0) + fake,
           (host, 0))
print("decoy", flush=True)
time.sleep(0.3)
s.sendall(body)
answer = b""
while b"\r\n\r\n" not in answer:
    answer += s.recv(65536)
print(answer.split(b" ")[1].decode(), flush=True)
s.close()
"#;

#[test]
fn a_decoy_body_with_a_wrong_checksum_does_not_take_the_real_bodys_place() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        ..ProbeConfig::default()
    };
    let probe = observe(&pair, config, Arc::clone(&stop));
    let output = pair
        .exec(&pair.client_ns, "python3")
        .args([
            "-c",
            DECOY_CLIENT_PY,
            SERVER_IP,
            &SERVER_PORT.to_string(),
            TOKEN,
            DECOY_TOKEN,
        ])
        .output()
        .expect("python3 is needed for the test client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().eq(["decoy", "200"]),
        "the client: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let observed = probe.join().expect("probe thread");
    let counters = observed.counters;
    let real = real_calls(&observed);
    assert_eq!(
        observed.calls.len(),
        1,
        "one call, with the token the server read: {counters:?}"
    );
    assert_eq!(real.len(), 1, "{:?}", observed.calls[0].token);
    assert!(real[0].complete, "{:?}", real[0]);
    assert_eq!(counters.checksum_bad, 1, "{counters:?}");
}

//! Forged traffic against `redcap-monitor run` in libpcap mode, on the server's veth in a
//! namespace pair: a flood of bare SYNs from a spoofed address (no handshake follows; the server
//! cannot answer) must not push a real API connection out of user space's connection table
//! while its request is in flight. Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

mod probe_env;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use monitor_tests::daemon::{LiveDaemon, fingerprint, jsonl};
use monitor_tests::require_root;
use probe_env::{SERVER_IP, SERVER_PORT, namespace_pair};

const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";
const SPOOFED_IP: &str = "198.51.100.9";
const SYNS: usize = 3_000;

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

/// Sends argv[3] bare SYNs from argv[1] (spoofed, one source port each) to argv[2]:8080, with
/// right checksums, through a raw IP socket.
const SYN_FLOOD_PY: &str = r#"
import random, socket, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def csum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total > 0xffff:
        total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
saddr, daddr = socket.inet_aton(src), socket.inet_aton(dst)
for i in range(n):
    tcp = struct.pack("!HHIIBBHHH", 1024 + i, 8080, random.getrandbits(32), 0, 5 << 4, 0x02,
                      65535, 0, 0)
    pseudo = saddr + daddr + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0, saddr, daddr)
    s.sendto(ip + tcp, (dst, 0))
print(n, flush=True)
"#;

#[test]
fn a_syn_flood_does_not_evict_an_api_connection_in_flight_in_libpcap_mode() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let key = dir.path().join("site.key");
    let calls = dir.path().join("calls.jsonl");
    let config = dir.path().join("pcap.toml");
    // A small table (8 connections may wait for an answer), so that the flood is many times it.
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"{}\"]\nports = [{SERVER_PORT}]\n\
             [reassembly]\nmax_connections = 64\n\
             [output]\ncalls = \"{}\"\n[store]\npath = \"{}\"\n",
            pair.server_if,
            calls.display(),
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();
    daemon
        .wait_for_log("capturing with libpcap", 1, Duration::from_secs(20))
        .unwrap();

    let mut client = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", CLIENT_PY, SERVER_IP, &SERVER_PORT.to_string(), TOKEN])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the test client");
    let mut answers = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    answers.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "head");
    // The server acknowledges the head: the connection is answered.
    std::thread::sleep(Duration::from_millis(300));
    let flood = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", SYN_FLOOD_PY, SPOOFED_IP, SERVER_IP, &SYNS.to_string()])
        .output()
        .expect("python3 is needed for the flood");
    assert!(
        flood.status.success(),
        "{}",
        String::from_utf8_lossy(&flood.stderr)
    );
    // Let the capture take the flood in before the body goes.
    std::thread::sleep(Duration::from_millis(500));
    writeln!(client.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    answers.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "200");
    assert!(client.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");

    let fp = fingerprint(&key, TOKEN).unwrap();
    let records = jsonl(&std::fs::read_to_string(&calls).unwrap_or_default());
    let real: Vec<&serde_json::Value> = records.iter().filter(|r| r["token_fp"] == fp).collect();
    assert_eq!(real.len(), 1, "the real call is reported once: {log}");
    assert_eq!(real[0]["complete"], true, "{}", real[0]);
    assert_eq!(real[0]["status"], 200);
    assert!(
        log.contains("unconfirmed_evicted"),
        "the flood is counted: {log}"
    );
}

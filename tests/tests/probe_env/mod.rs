//! What the real-kernel probe tests (and the live-overhead bench) share: a namespace pair with
//! fixed addresses, a logging HTTP test server, and a probe loaded and attached inside the
//! server's namespace on its own thread. Everything created here is removed on drop, also on
//! panic. Unlike the harness library, this links the daemon's library to drive the probe itself.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;

use monitor_tests::netns::NamespacePair;
use redcap_monitor::edges::capture::kernel::{KernelProbe, ProbeConfig};
use redcap_monitor::edges::capture::tls::TlsCapture;

pub const SUBNET: u8 = 203;
pub const SERVER_IP: &str = "10.203.0.1";
pub const CLIENT_IP: &str = "10.203.0.2";
pub const SERVER_IP6: &str = "fd00:203::1";
pub const CLIENT_IP6: &str = "fd00:203::2";
pub const SERVER_PORT: u16 = 8080;

/// The namespace pair the probe tests use: the addresses above, removed on drop.
pub fn namespace_pair() -> NamespacePair {
    let pair = NamespacePair::create(SUBNET).expect("creating the network namespaces");
    debug_assert_eq!(
        (pair.server_ip.as_str(), pair.server_ip6.as_str()),
        (SERVER_IP, SERVER_IP6)
    );
    pair
}

/// A child process killed on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/1.1 keep-alive server that logs every exchange as JSON (client port, method, path,
/// the raw request and response bytes) before answering, so the test knows exactly what crossed
/// the wire. API paths get a JSON answer of argv[3] bytes (pages a tiny one).
const SERVER_PY: &str = r#"
import json, socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
api_body = b'{"data":"' + b"x" * max(0, int(sys.argv[3]) - 11) + b'"}'
lock = threading.Lock()
srv = socket.socket(socket.AF_INET6)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("::", int(sys.argv[2])))
srv.listen(256)
print("ready", flush=True)
def handle(conn, addr):
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, path, _ = lines[0].split(b" ", 2)
            length = 0
            for line in lines[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            while len(rest) < length:
                data = conn.recv(65536)
                if not data:
                    return
                rest += data
            request = head + b"\r\n\r\n" + rest[:length]
            buf = rest[length:]
            if b"/api/" in path or b"/API/" in path:
                body = api_body
            else:
                body = b'{"page":true}'
            response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            with lock:
                log.write(json.dumps({"client_port": addr[1], "method": method.decode(),
                    "path": path.decode(), "request": request.hex(), "response": response.hex()}) + "\n")
            conn.sendall(response)
while True:
    conn, addr = srv.accept()
    threading.Thread(target=handle, args=(conn, addr), daemon=True).start()
"#;

/// The logging test server on [`SERVER_PORT`] in the server namespace, answering API calls with
/// `api_response_bytes` of JSON; returns once it listens.
pub fn start_server(pair: &NamespacePair, log: &Path, api_response_bytes: usize) -> Running {
    let mut child = pair
        .exec(&pair.server_ns, "python3")
        .args(["-c", SERVER_PY])
        .arg(log)
        .arg(SERVER_PORT.to_string())
        .arg(api_response_bytes.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the test server");
    let stdout = child.stdout.take().expect("piped stdout");
    let server = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the server's ready line");
    assert_eq!(line.trim(), "ready", "the test server did not start");
    server
}

/// Loads the probe, attaches it to the server's veth from a thread that has entered the server's
/// namespace (aya attaches by interface name in the caller's namespace), then hands it to `body`
/// on that thread. Returns once the probe is attached; panics if it could not be.
pub fn spawn_attached_probe<T: Send + 'static>(
    pair: &NamespacePair,
    config: ProbeConfig,
    body: impl FnOnce(KernelProbe) -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let netns = format!("/var/run/netns/{}", pair.server_ns);
    let interface = pair.server_if.clone();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let handle = thread::spawn(move || {
        enter_netns(&netns);
        let probe = match KernelProbe::load(&config).and_then(|mut probe| {
            probe.attach(&interface)?;
            Ok(probe)
        }) {
            Ok(probe) => probe,
            Err(err) => {
                let _ = ready_tx.send(Err(err.to_string()));
                panic!("probe: {err}");
            }
        };
        ready_tx.send(Ok(())).expect("test thread waits");
        body(probe)
    });
    match ready_rx.recv() {
        Ok(Ok(())) => handle,
        Ok(Err(err)) => panic!("the probe did not start: {err}"),
        Err(_) => panic!("the probe thread died: {:?}", handle.join().err()),
    }
}

/// Loads the probe (TC ports `ports`, not attached to any interface) and attaches the OpenSSL
/// uprobes to the libssl of the processes named `name`; they stay attached while both returned
/// values live. An error when no such process maps a libssl.
pub fn attach_tls_probe(ports: Vec<u16>, name: &str) -> anyhow::Result<(KernelProbe, TlsCapture)> {
    use anyhow::Context;
    let mut probe = KernelProbe::load(&ProbeConfig {
        ports,
        tls_processes: vec![name.to_owned()],
        ..ProbeConfig::default()
    })
    .context("loading the probe")?;
    let mut tls = TlsCapture::new(vec![name.to_owned()], Vec::new());
    tls.start(&mut probe)
        .context("attaching the OpenSSL uprobes")?;
    if tls.libraries().next().is_none() {
        anyhow::bail!("no libssl found in the {name} processes");
    }
    Ok((probe, tls))
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    use std::os::fd::AsRawFd;
    // SAFETY: a valid namespace fd; setns affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

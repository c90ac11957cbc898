//! A raw HTTP/1.x client for request shapes that ordinary clients never send: the caller gives
//! every byte and every write boundary ([`Step`]), over plain TCP or TLS (rustls, trusting the
//! test CA). With `TCP_NODELAY` each [`Step::Send`] leaves as its own segment (over TLS, its own
//! record, which the server reads with its own `SSL_read`). Responses are read only to know when
//! the server is done; their status codes are returned for the report.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// One thing the client does, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// One `write` of these bytes (one segment with `TCP_NODELAY`, one TLS record over TLS).
    Send(Vec<u8>),
    /// Waits before the next step (lets the previous segment leave on its own).
    Pause(Duration),
    /// Waits for an interim `100 Continue` (at most 1 s, as curl does), consuming it.
    AwaitContinue,
    /// Waits until this many final responses arrived since the last wait (or EOF).
    AwaitResponses(usize),
}

/// `Send` of a text.
pub fn send(text: impl AsRef<[u8]>) -> Step {
    Step::Send(text.as_ref().to_vec())
}

/// How to reach the server.
#[derive(Clone)]
pub enum Transport {
    Plain(SocketAddr),
    Tls {
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    },
}

impl Transport {
    /// TLS to `addr`, trusting only the CA certificate (PEM) at `ca_pem`; HTTP/1.1, no ALPN.
    pub fn tls(addr: SocketAddr, ca_pem: &Path) -> Result<Transport> {
        let der = std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(ca_pem)
            .output()
            .context("running openssl x509")?;
        if !der.status.success() {
            bail!("openssl x509 -outform DER failed on {}", ca_pem.display());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(der.stdout))
            .context("adding the test CA")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Transport::Tls {
            addr,
            config: Arc::new(config),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Transport::Plain(addr) | Transport::Tls { addr, .. } => *addr,
        }
    }
}

/// What the server answered on one connection.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Status codes of the final responses, in order.
    pub statuses: Vec<u16>,
    /// Whether an interim `100 Continue` came.
    pub continued: bool,
    /// The client's local port.
    pub local_port: u16,
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// Runs `steps` on a new connection, then waits for `final_responses` more responses (or EOF,
/// at most `timeout` in all) and closes it.
pub fn exchange(
    transport: &Transport,
    steps: &[Step],
    final_responses: usize,
    timeout: Duration,
) -> Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let tcp = TcpStream::connect_timeout(&transport.addr(), Duration::from_secs(3))
        .with_context(|| format!("connecting to {}", transport.addr()))?;
    tcp.set_nodelay(true)?;
    let local_port = tcp.local_addr()?.port();
    let mut conn: Box<dyn Conn> = match transport {
        Transport::Plain(_) => Box::new(tcp.try_clone()?),
        Transport::Tls { config, .. } => {
            let name = rustls::pki_types::ServerName::from(transport.addr().ip());
            let client = rustls::ClientConnection::new(config.clone(), name)?;
            let mut stream = rustls::StreamOwned::new(client, tcp.try_clone()?);
            // Finish the handshake before the first request byte.
            tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
            while stream.conn.is_handshaking() {
                stream
                    .conn
                    .complete_io(&mut stream.sock)
                    .context("TLS handshake")?;
            }
            Box::new(stream)
        }
    };
    let mut reader = Responses::default();
    let mut outcome = Outcome {
        local_port,
        ..Outcome::default()
    };
    for step in steps {
        match step {
            Step::Send(bytes) => {
                conn.write_all(bytes)?;
                conn.flush()?;
            }
            Step::Pause(d) => std::thread::sleep(*d),
            Step::AwaitContinue => {
                let until = (Instant::now() + Duration::from_secs(1)).min(deadline);
                outcome.continued |= reader.await_continue(&mut *conn, &tcp, until)?;
            }
            Step::AwaitResponses(n) => {
                let got = reader.await_final(&mut *conn, &tcp, *n, deadline)?;
                outcome.statuses.extend(got);
            }
        }
    }
    let got = reader.await_final(&mut *conn, &tcp, final_responses, deadline)?;
    outcome.statuses.extend(got);
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    Ok(outcome)
}

/// Incremental parse of the responses on one connection.
#[derive(Default)]
struct Responses {
    buf: Vec<u8>,
    eof: bool,
}

enum Parsed {
    /// A whole response of `len` bytes with this status.
    Whole {
        status: u16,
        len: usize,
    },
    NeedMore,
}

impl Responses {
    fn fill(&mut self, conn: &mut dyn Conn, tcp: &TcpStream, until: Instant) -> Result<bool> {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || self.eof {
            return Ok(false);
        }
        tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 65536];
        match conn.read(&mut chunk) {
            Ok(0) => {
                self.eof = true;
                Ok(false)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            // A reset or a TLS close without close_notify: the server is done.
            Err(_) => {
                self.eof = true;
                Ok(false)
            }
        }
    }

    fn await_continue(
        &mut self,
        conn: &mut dyn Conn,
        tcp: &TcpStream,
        until: Instant,
    ) -> Result<bool> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                if self.buf.starts_with(b"HTTP/1.1 100") || self.buf.starts_with(b"HTTP/1.0 100") {
                    self.buf.drain(..end + 4);
                    return Ok(true);
                }
                // A final answer instead (e.g. 417 or an error): leave it for await_final.
                return Ok(false);
            }
            if !self.fill(conn, tcp, until)? {
                return Ok(false);
            }
        }
    }

    fn await_final(
        &mut self,
        conn: &mut dyn Conn,
        tcp: &TcpStream,
        n: usize,
        until: Instant,
    ) -> Result<Vec<u16>> {
        let mut statuses = Vec::new();
        while statuses.len() < n {
            match parse_response(&self.buf, self.eof) {
                Parsed::Whole { status, len } => {
                    self.buf.drain(..len);
                    if !(100..200).contains(&status) {
                        statuses.push(status);
                    }
                    continue;
                }
                Parsed::NeedMore => {}
            }
            if !self.fill(conn, tcp, until)? {
                // At EOF a response without a length is whole: the loop's top takes it.
                let whole_at_eof =
                    self.eof && matches!(parse_response(&self.buf, true), Parsed::Whole { .. });
                if !whole_at_eof {
                    break;
                }
            }
        }
        Ok(statuses)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One response at the start of `buf`, if whole (a body without a length ends at EOF).
fn parse_response(buf: &[u8], eof: bool) -> Parsed {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Parsed::NeedMore;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body_start = head_end + 4;
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Parsed::Whole {
            status,
            len: body_start,
        };
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    if chunked {
        let mut at = body_start;
        loop {
            let Some(line_end) = find(&buf[at..], b"\r\n") else {
                return Parsed::NeedMore;
            };
            let size_text = String::from_utf8_lossy(&buf[at..at + line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or(0);
            at += line_end + 2;
            if size == 0 {
                // Trailers end with an empty line.
                let Some(end) = find(&buf[at..], b"\r\n") else {
                    return Parsed::NeedMore;
                };
                if end == 0 {
                    return Parsed::Whole {
                        status,
                        len: at + 2,
                    };
                }
                let Some(end) = find(&buf[at..], b"\r\n\r\n") else {
                    return Parsed::NeedMore;
                };
                return Parsed::Whole {
                    status,
                    len: at + end + 4,
                };
            }
            if buf.len() < at + size + 2 {
                return Parsed::NeedMore;
            }
            at += size + 2;
        }
    }
    match length {
        Some(n) if buf.len() >= body_start + n => Parsed::Whole {
            status,
            len: body_start + n,
        },
        Some(_) => Parsed::NeedMore,
        None if eof => Parsed::Whole {
            status,
            len: buf.len(),
        },
        None => Parsed::NeedMore,
    }
}

//! A webhook receiver for tests: answers 200 on loopback (or in a namespace, with
//! [`crate::netns::listen_in`]) and keeps every request it took.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request the receiver took: its head and body.
#[derive(Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
}

/// A webhook receiver on loopback answering 200, recording every request.
pub fn receiver(listener: TcpListener) -> Arc<Mutex<Vec<Received>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let mut parsed = None;
            while parsed.is_none() {
                let Ok(n) = stream.read(&mut chunk) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len: usize = head
                        .to_lowercase()
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    parsed = Some((head, end + 4, len));
                }
            }
            let Some((head, start, len)) = parsed else {
                continue;
            };
            while buf.len() < start + len {
                let Ok(n) = stream.read(&mut chunk) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            record.lock().unwrap().push(Received {
                head,
                body: buf[start..].to_vec(),
            });
        }
    });
    seen
}

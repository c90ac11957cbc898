//! Just enough HTTP/1.1 for a local scrape and admin calls: one request per connection, a
//! bounded head and body, a deadline for the whole request, `Connection: close` on every answer.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Request, Response, Service, route};

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body accepted (admin commands are a few hundred bytes).
const MAX_BODY: usize = 4 * 1024;
const MAX_HEADERS: usize = 32;

enum ReadError {
    TooLarge,
    Malformed(&'static str),
    /// Closed, timed out or failed: nothing to answer.
    Gone,
}

/// Serves one connection: reads one request within the deadline, answers it, closes.
pub(super) async fn handle(mut stream: TcpStream, service: &Service) {
    let mut buffer = Vec::with_capacity(1024);
    let read = tokio::time::timeout(service.timeout, read_request(&mut stream, &mut buffer)).await;
    let response = match read {
        Ok(Ok((head_len, body_len))) => {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            if parsed.parse(&buffer[..head_len]).is_err() {
                Response::error(400, "malformed request")
            } else {
                let path = parsed.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                let request = Request {
                    method: parsed.method.unwrap_or(""),
                    path,
                    authorization: parsed
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                        .map(|h| h.value),
                    body: &buffer[head_len..head_len + body_len],
                };
                route(&request, service).await
            }
        }
        Ok(Err(ReadError::TooLarge)) => Response::error(413, "request too large"),
        Ok(Err(ReadError::Malformed(why))) => Response::error(400, why),
        Ok(Err(ReadError::Gone)) | Err(_) => return,
    };
    let _ = tokio::time::timeout(service.timeout, write_response(&mut stream, &response)).await;
}

/// Answers 503 to a connection over `api.max_connections`.
pub(super) async fn refuse_busy(mut stream: TcpStream, timeout: std::time::Duration) {
    let response = Response::error(503, "too many connections; try again");
    let _ = tokio::time::timeout(timeout, write_response(&mut stream, &response)).await;
}

/// Reads a head and its body into `buffer`; returns (head length, body length).
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<(usize, usize), ReadError> {
    let mut chunk = [0u8; 2048];
    let head_len = loop {
        if let Some(end) = find_head_end(buffer) {
            break end;
        }
        if buffer.len() >= MAX_HEAD {
            return Err(ReadError::TooLarge);
        }
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    if head_len > MAX_HEAD {
        return Err(ReadError::TooLarge);
    }
    let body_len = content_length(&buffer[..head_len])?;
    if body_len > MAX_BODY {
        return Err(ReadError::TooLarge);
    }
    while buffer.len() < head_len + body_len {
        let n = stream.read(&mut chunk).await.map_err(|_| ReadError::Gone)?;
        if n == 0 {
            return Err(ReadError::Gone);
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.len() > MAX_HEAD + MAX_BODY {
            return Err(ReadError::TooLarge);
        }
    }
    Ok((head_len, body_len))
}

fn find_head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

fn content_length(head: &[u8]) -> Result<usize, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => {
            return Err(ReadError::Malformed("malformed request head"));
        }
    }
    if parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(ReadError::Malformed(
            "chunked request bodies are not accepted: send Content-Length",
        ));
    }
    match parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        None => Ok(0),
        Some(h) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or(ReadError::Malformed("bad Content-Length")),
    }
}

async fn write_response(stream: &mut TcpStream, response: &Response) -> std::io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Content Too Large",
        _ => "Service Unavailable",
    };
    let challenge = if response.bearer_challenge {
        "WWW-Authenticate: Bearer realm=\"redcap-monitor\"\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{challenge}\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.shutdown().await
}

//! `synth-capture --out FILE --min-bytes N [--seed S]`: writes a pcap of realistic REDCap API
//! traffic (hundreds of tokens, keep-alive and one-shot connections interleaved, PyCap-style
//! urlencoded and redcapAPI-style multipart requests, gzip + chunked responses from bytes to
//! megabytes, some 403s) until the file holds at least N bytes; prints `calls=N`.
//! Response bodies come from a pool built once, so 100 MB takes seconds in release mode.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use monitor_tests::synth::http::{self, BodyEncoding, FORBIDDEN_JSON, Response};
use monitor_tests::synth::{Conversation, NIC_MSS, PcapOut, Segment, Side};

const T0: f64 = 1_767_600_000.0;
const API: &str = "/redcap/api/";
const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10), 80);
const TOKENS: usize = 400;
/// Connections open at once; their segments interleave in the file.
const ACTIVE: usize = 12;
/// Segments written from one connection before the scheduler picks another.
const BURST: usize = 12;
/// Capture-time gap between packets.
const PACKET_GAP_S: f64 = 0.000_02;

struct Args {
    out: PathBuf,
    min_bytes: u64,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut out = None;
    let mut min_bytes = None;
    let mut seed = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value()?)),
            "--min-bytes" => min_bytes = Some(value()?.parse().context("--min-bytes")?),
            "--seed" => seed = value()?.parse().context("--seed")?,
            _ => bail!("usage: synth-capture --out FILE --min-bytes N [--seed S] (unknown {arg})"),
        }
    }
    Ok(Args {
        out: out.context("--out is required")?,
        min_bytes: min_bytes.context("--min-bytes is required")?,
        seed,
    })
}

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Pre-built responses, each serialised once.
struct Pool {
    tiny: Response,
    empty: Response,
    forbidden: Response,
    count: Response,
    metadata: Response,
    records: Vec<Response>,
    big_records: Vec<Response>,
    report: Response,
    log: Response,
    file: Response,
}

fn json_rows(rng: &mut Rng, target: usize) -> Vec<u8> {
    let mut out = String::with_capacity(target + 256);
    out.push('[');
    let mut id = 1;
    while out.len() < target {
        if id > 1 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"record_id":"{id}","age":"{}","weight":"{}.{}","site":"site_{}","notes":"visit {} ok {:x}","form_1_complete":"2"}}"#,
            18 + rng.below(70),
            40 + rng.below(80),
            rng.below(10),
            rng.below(12),
            rng.below(9),
            rng.next()
        ));
        id += 1;
    }
    out.push(']');
    out.into_bytes()
}

impl Pool {
    fn build(rng: &mut Rng) -> Pool {
        let gz = |level| BodyEncoding::GzipChunked { level, chunk: 8192 };
        let json = "application/json; charset=utf-8";
        let metadata: Vec<u8> = {
            let mut s = String::from("[");
            for i in 0..120 {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    r#"{{"field_name":"field_{i}","form_name":"form_{}","section_header":"","field_type":"radio","field_label":"Question {i} about the participant's visit","select_choices_or_calculations":"1, Yes | 2, No | 3, Unknown","field_note":"","text_validation_type_or_show_slider_number":"","identifier":"","branching_logic":"[field_{}] = '1'","required_field":"","field_annotation":""}}"#,
                    i / 20,
                    i.max(1) - 1
                ));
            }
            s.push(']');
            s.into_bytes()
        };
        let mut file = vec![0u8; 200_000];
        for b in file.iter_mut() {
            *b = rng.next() as u8;
        }
        Pool {
            tiny: http::response(200, "text/html; charset=UTF-8", b"15.7.6", gz(1)),
            empty: http::response(200, "text/html; charset=UTF-8", b"", BodyEncoding::Plain),
            forbidden: http::response(403, json, FORBIDDEN_JSON.as_bytes(), gz(1)),
            count: http::response(200, json, br#"{"count": 25}"#, gz(1)),
            metadata: http::response(200, json, &metadata, gz(4)),
            records: [2_000, 8_000, 30_000, 120_000]
                .into_iter()
                .map(|n| http::response(200, json, &json_rows(rng, n), gz(1)))
                .collect(),
            big_records: [600_000, 2_000_000, 4_000_000]
                .into_iter()
                .map(|n| http::response(200, json, &json_rows(rng, n), gz(1)))
                .collect(),
            report: http::response(200, json, &json_rows(rng, 550_000), gz(1)),
            log: http::response(200, json, &json_rows(rng, 200_000), gz(1)),
            file: http::response(
                200,
                "application/octet-stream; name=\"scan.pdf\"",
                &file,
                BodyEncoding::Plain,
            ),
        }
    }
}

fn token(seed: u64, i: usize) -> String {
    let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    format!("{:016X}{:016X}", rng.next(), rng.next())
}

/// One API call: the request bytes and a reference to its response.
fn make_call<'p>(rng: &mut Rng, pool: &'p Pool, tok: &str) -> (Vec<u8>, &'p Response) {
    let bad = rng.below(100) < 6;
    let tok = if bad {
        "0000000000000000000000000000BAD0"
    } else {
        tok
    };
    let (request, response) = match rng.below(100) {
        0..=11 => (
            http::post_form(API, &[("token", tok), ("content", "version")]),
            &pool.tiny,
        ),
        12..=21 => (
            http::post_form(
                API,
                &[("token", tok), ("content", "metadata"), ("format", "json")],
            ),
            &pool.metadata,
        ),
        22..=46 => {
            let n = 1 + rng.below(20) as usize;
            let ids: Vec<String> = (0..n).map(|_| (1 + rng.below(5000)).to_string()).collect();
            let keys: Vec<String> = (0..n).map(|i| format!("records[{i}]")).collect();
            let mut pairs = vec![
                ("token", tok),
                ("content", "record"),
                ("format", "json"),
                ("type", "flat"),
            ];
            pairs.extend(
                keys.iter()
                    .map(String::as_str)
                    .zip(ids.iter().map(String::as_str)),
            );
            let resp = &pool.records[rng.below(pool.records.len() as u64) as usize];
            (http::post_form(API, &pairs), resp)
        }
        47..=54 => {
            // PyCap's export_records(): every field name listed, no records.
            let n = 200 + rng.below(3000) as usize;
            let names: Vec<String> = (0..n).map(|i| format!("field_{i}")).collect();
            let keys: Vec<String> = (0..n).map(|i| format!("fields[{i}]")).collect();
            let mut pairs = vec![
                ("token", tok),
                ("content", "record"),
                ("format", "json"),
                ("type", "flat"),
            ];
            pairs.extend(
                keys.iter()
                    .map(String::as_str)
                    .zip(names.iter().map(String::as_str)),
            );
            let resp = &pool.big_records[rng.below(pool.big_records.len() as u64) as usize];
            (http::post_form(API, &pairs), resp)
        }
        55..=64 => {
            let data = String::from_utf8_lossy(&json_rows(rng, 10_000)).into_owned();
            let pairs = [
                ("token", tok),
                ("content", "record"),
                ("format", "json"),
                ("type", "flat"),
                ("overwriteBehavior", "normal"),
                ("data", &data),
                ("returnContent", "count"),
                ("returnFormat", "json"),
            ];
            (http::post_form(API, &pairs), &pool.count)
        }
        65..=79 => {
            // redcapAPI: multipart even for exports, 1-based arrays, token last.
            let rec = (1 + rng.below(900)).to_string();
            let boundary = format!("------------------------{:016x}", rng.next());
            let (ctype, body) = http::multipart(
                &boundary,
                &[
                    ("content", "record"),
                    ("format", "json"),
                    ("records[1]", &rec),
                    ("returnFormat", "json"),
                    ("token", tok),
                ],
                None,
            );
            let resp = &pool.records[rng.below(2) as usize];
            (http::post("/redcap/api/", &ctype, &body, &[]), resp)
        }
        80..=84 => (
            http::post_form(
                API,
                &[
                    ("token", tok),
                    ("content", "report"),
                    ("format", "json"),
                    ("report_id", "31"),
                ],
            ),
            &pool.report,
        ),
        85..=88 => (
            http::post_form(
                API,
                &[
                    ("token", tok),
                    ("content", "log"),
                    ("format", "json"),
                    ("logtype", "record"),
                ],
            ),
            &pool.log,
        ),
        89..=91 => (
            http::post_form(
                API,
                &[
                    ("token", tok),
                    ("content", "file"),
                    ("action", "export"),
                    ("record", "3"),
                    ("field", "consent_pdf"),
                ],
            ),
            &pool.file,
        ),
        _ => {
            let (ctype, body) = http::multipart(
                "f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5",
                &[
                    ("token", tok),
                    ("content", "file"),
                    ("action", "import"),
                    ("field", "scan"),
                    ("record", "9"),
                ],
                Some(("scan.bin", &[0x5a; 6000])),
            );
            (http::post(API, &ctype, &body, &[]), &pool.empty)
        }
    };
    if bad {
        return (request, &pool.forbidden);
    }
    (request, response)
}

/// An open connection and the segments it still has to put on the wire.
struct Connection {
    conv: Conversation,
    token: usize,
    calls_left: usize,
    pending: VecDeque<Segment>,
    closed: bool,
}

struct Generator {
    rng: Rng,
    pool: Pool,
    tokens: Vec<String>,
    next_port: u32,
    calls: u64,
}

impl Generator {
    fn open(&mut self) -> Connection {
        // A skewed choice: a few tokens make most of the calls, as on a real server.
        let r = self.rng.unit();
        let t = ((r * r) * self.tokens.len() as f64) as usize % self.tokens.len();
        self.next_port += 1;
        let port = 20_000 + (self.next_port % 40_000) as u16;
        let ip = Ipv4Addr::new(10, 20, (t / 250) as u8, (t % 250) as u8 + 1);
        let mut conv = Conversation::new(
            SocketAddr::V4(SocketAddrV4::new(ip, port)),
            SocketAddr::V4(SERVER),
        );
        let pending: VecDeque<Segment> = conv.handshake().into();
        let calls_left = if self.rng.below(10) < 3 {
            1
        } else {
            2 + self.rng.below(7) as usize
        };
        Connection {
            conv,
            token: t,
            calls_left,
            pending,
            closed: false,
        }
    }

    /// Queues the next call (or the close) of `c` once its queue has drained.
    fn refill(&mut self, c: &mut Connection) {
        if !c.pending.is_empty() || c.closed {
            return;
        }
        if c.calls_left == 0 {
            c.pending.extend(c.conv.close());
            c.closed = true;
            return;
        }
        c.calls_left -= 1;
        let (request, response) = make_call(&mut self.rng, &self.pool, &self.tokens[c.token]);
        let mut segs = Vec::with_capacity((request.len() + response.bytes.len()) / NIC_MSS + 4);
        c.conv.data_into(Side::Client, &request, NIC_MSS, &mut segs);
        segs.push(c.conv.ack(Side::Server));
        for (i, piece) in response.bytes.chunks(NIC_MSS).enumerate() {
            segs.push(
                c.conv
                    .segment(Side::Server, c.conv.next_seq(Side::Server), piece),
            );
            c.conv.skip(Side::Server, piece.len());
            // Delayed ACKs: the client acknowledges every second segment.
            if i % 2 == 1 {
                segs.push(c.conv.ack(Side::Client));
            }
        }
        c.pending.extend(segs);
        self.calls += 1;
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut rng = Rng(args.seed);
    let pool = Pool::build(&mut rng);
    let tokens = (0..TOKENS).map(|i| token(args.seed, i)).collect();
    let mut generator = Generator {
        rng,
        pool,
        tokens,
        next_port: 0,
        calls: 0,
    };
    let mut out = PcapOut::create(&args.out)?;
    let mut now = T0;
    let mut active: Vec<Connection> = Vec::with_capacity(ACTIVE);
    loop {
        let filling = out.bytes() < args.min_bytes;
        while filling && active.len() < ACTIVE {
            now += generator.rng.unit() * 0.3;
            active.push(generator.open());
        }
        if active.is_empty() {
            break;
        }
        let i = generator.rng.below(active.len() as u64) as usize;
        let conn = &mut active[i];
        generator.refill(conn);
        for _ in 0..BURST {
            let Some(seg) = conn.pending.pop_front() else {
                break;
            };
            out.write(&conn.conv, &seg, now)?;
            now += PACKET_GAP_S;
        }
        if conn.closed && conn.pending.is_empty() {
            active.swap_remove(i);
        }
    }
    let packets = out.packets();
    out.finish()?;
    println!("calls={}", generator.calls);
    eprintln!(
        "packets={packets} bytes={}",
        std::fs::metadata(&args.out)?.len()
    );
    Ok(())
}

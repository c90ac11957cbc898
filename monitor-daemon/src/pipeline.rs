//! The pipeline from captured packets to policy verdicts, the same for every capture source.
//!
//! Wires decode → reassembly → http → redcap → policy and drives their timers from the packets'
//! own clock, so a capture replayed offline gives exactly what the same packets gave live. Does no
//! I/O: sources push frames or segments in, verdicts come out through a callback.

use crate::capture::{DecodeStats, Frame, decode};
use crate::config::{Config, ConfigError};
use crate::http::{HttpExchange, HttpLimits, HttpStats, HttpTracker};
use crate::model::{Span, TcpSegment, Timestamp};
use crate::policy::{Policy, PolicyStats, Verdict};
use crate::reassembly::{Reassembler, ReassemblyLimits, ReassemblyStats};
use crate::redcap::{ApiCall, ApiPaths, ApiRequestSelector, FormBody};
use crate::token::SiteKey;

/// How often (in capture time) idle connections are looked for.
const EXPIRY_INTERVAL: Span = Span::from_secs(1);

pub struct Pipeline {
    decode_stats: DecodeStats,
    reassembler: Reassembler,
    http: HttpTracker<ApiRequestSelector>,
    exchanges: Vec<HttpExchange<FormBody>>,
    key: SiteKey,
    policy: Policy,
    /// The newest packet time seen: the pipeline's notion of now.
    clock: Timestamp,
    next_expiry: Timestamp,
}

/// Every stage's counters, for reports and telemetry.
pub struct PipelineStats<'a> {
    pub decode: &'a DecodeStats,
    pub reassembly: &'a ReassemblyStats,
    pub http: &'a HttpStats,
    pub policy: &'a PolicyStats,
}

impl Pipeline {
    pub fn new(config: &Config, key: SiteKey) -> Result<Pipeline, ConfigError> {
        let paths =
            ApiPaths::new(&config.redcap.api_paths).map_err(|err| ConfigError::Invalid {
                path: "configuration".into(),
                key: "redcap.api_paths".into(),
                message: err.to_string(),
            })?;
        let r = &config.reassembly;
        let reassembler = Reassembler::new(ReassemblyLimits {
            max_connections: r.max_connections,
            max_buffered_per_direction: r.max_buffered_bytes_per_direction,
            max_buffered_total: r.max_buffered_bytes_total,
            idle_timeout: r.idle_timeout.span(),
            server_ports: config.capture.ports.clone(),
        });
        let h = &config.http;
        let http = HttpTracker::new(
            HttpLimits {
                max_head_bytes: h.max_head_bytes,
                max_headers: h.max_headers,
                max_pending_requests: h.max_pending_requests,
                max_decoded_body_bytes: h.max_decoded_body_bytes,
            },
            ApiRequestSelector::new(paths),
        );
        Ok(Pipeline {
            decode_stats: DecodeStats::default(),
            reassembler,
            http,
            exchanges: Vec::new(),
            key,
            policy: Policy::new(&config.policy),
            clock: Timestamp::default(),
            next_expiry: Timestamp::default(),
        })
    }

    /// Feeds one captured frame (offline files, libpcap).
    pub fn push_frame(&mut self, frame: &Frame<'_>, out: &mut impl FnMut(Verdict)) {
        if let Some(segment) = decode(frame, &mut self.decode_stats) {
            self.push_segment(&segment, out);
        }
    }

    /// Feeds one TCP segment (sources that decode for themselves, e.g. the kernel probe).
    pub fn push_segment(&mut self, segment: &TcpSegment<'_>, out: &mut impl FnMut(Verdict)) {
        self.advance_clock(segment.ts);
        let Pipeline {
            reassembler,
            http,
            exchanges,
            ..
        } = self;
        reassembler.push(segment, &mut |event| http.on_event(&event, exchanges));
        self.release(out);
    }

    /// Time passes without a packet (a live source that is idle): expires idle connections and
    /// passes on the verdicts whose reorder wait is over. `now` is on the packets' clock (epoch
    /// time); a `now` behind the newest packet changes nothing.
    pub fn tick(&mut self, now: Timestamp, out: &mut impl FnMut(Verdict)) {
        self.advance_clock(now);
        self.release(out);
    }

    /// End of input: closes every connection and evaluates every call still waiting.
    pub fn finish(&mut self, out: &mut impl FnMut(Verdict)) {
        let Pipeline {
            reassembler,
            http,
            exchanges,
            clock,
            ..
        } = self;
        reassembler.finish(*clock, &mut |event| http.on_event(&event, exchanges));
        self.release(out);
        while let Some(verdict) = self.policy.drain() {
            out(verdict);
        }
    }

    pub fn stats(&self) -> PipelineStats<'_> {
        PipelineStats {
            decode: &self.decode_stats,
            reassembly: self.reassembler.stats(),
            http: self.http.stats(),
            policy: self.policy.stats(),
        }
    }

    fn advance_clock(&mut self, ts: Timestamp) {
        // Packets from several interfaces may be slightly out of order; time never goes back.
        if ts <= self.clock {
            return;
        }
        self.clock = ts;
        if ts >= self.next_expiry {
            self.next_expiry = ts.plus(EXPIRY_INTERVAL);
            let Pipeline {
                reassembler,
                http,
                exchanges,
                ..
            } = self;
            reassembler.expire(ts, &mut |event| http.on_event(&event, exchanges));
        }
    }

    /// Turns finished exchanges into calls and passes on the verdicts that are due.
    fn release(&mut self, out: &mut impl FnMut(Verdict)) {
        for exchange in self.exchanges.drain(..) {
            self.policy
                .push(ApiCall::from_exchange(exchange, &self.key));
        }
        while let Some(verdict) = self.policy.poll(self.clock) {
            out(verdict);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::model::{Endpoint, TcpFlags};

    const CLIENT: Endpoint = Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        port: 40000,
    };
    const SERVER: Endpoint = Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        port: 80,
    };

    fn segment(ts_ms: u64, to_server: bool, seq: u32, payload: &[u8]) -> TcpSegment<'_> {
        let (src, dst) = if to_server {
            (CLIENT, SERVER)
        } else {
            (SERVER, CLIENT)
        };
        TcpSegment {
            ts: Timestamp(1_700_000_000_000_000_000 + ts_ms * 1_000_000),
            src,
            dst,
            seq,
            ack: Some(1),
            flags: TcpFlags {
                ack: true,
                ..TcpFlags::default()
            },
            payload,
        }
    }

    /// One complete API exchange on a connection that stays open.
    fn one_call(pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
        let body = b"token=0123456789ABCDEF0123456789ABCDEF&content=version";
        let request = format!(
            "POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
        pipeline.push_segment(&segment(0, true, 1000, request.as_bytes()), out);
        pipeline.push_segment(&segment(5, false, 5000, response), out);
    }

    #[test]
    fn an_idle_tick_releases_a_call_once_its_reorder_wait_is_over() {
        let config = Config::default();
        let mut pipeline = Pipeline::new(&config, SiteKey::from_bytes([7; 32])).unwrap();
        let mut released = Vec::new();
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        assert!(released.is_empty(), "held for the reorder window");
        let start = Timestamp(1_700_000_000_000_000_000);
        pipeline.tick(start.plus(Span::from_secs(60)), &mut |v| released.push(v));
        assert!(released.is_empty(), "still within the reorder window");
        let wait = config.policy.reorder_window.span();
        pipeline.tick(start.plus(wait).plus(Span::from_secs(1)), &mut |v| {
            released.push(v)
        });
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].call.ts_start, start);
    }

    #[test]
    fn a_tick_behind_the_packets_clock_changes_nothing() {
        let config = Config::default();
        let mut pipeline = Pipeline::new(&config, SiteKey::from_bytes([7; 32])).unwrap();
        let mut released = Vec::new();
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        pipeline.tick(Timestamp(1), &mut |v| released.push(v));
        assert!(released.is_empty());
        pipeline.finish(&mut |v| released.push(v));
        assert_eq!(released.len(), 1);
    }
}

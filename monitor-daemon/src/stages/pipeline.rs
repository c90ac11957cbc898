//! The pipeline from captured packets to policy verdicts, the same for every capture source.
//!
//! Wires decode → reassembly → http → redcap → policy and health, and drives their timers from
//! the packets' own clock, so a capture replayed offline gives exactly what the same packets gave
//! live. Does no I/O: sources push frames or segments in; verdicts come out through a callback,
//! changes of the server's health through [`Pipeline::take_health_changes`].

use std::collections::VecDeque;

use crate::shared::model::{Endpoint, ResumedEarly, Span, TcpSegment, Timestamp};
use crate::shared::token::{SiteKey, TokenFingerprint};
use crate::stages::cluster::{Batch, Cluster, ClusterConfig, Outbox, PeerEvent};
use crate::stages::decode::{DecodeStats, Frame, decode};
use crate::stages::health::{HealthChange, HealthConfig, HealthStats, ResponsivenessDetector};
use crate::stages::http::{
    HttpConfig, HttpExchange, HttpLimits, HttpStats, HttpTracker, Releasable,
};
use crate::stages::policy::enforce::{EnforcementConfig, Enforcer, HealthView};
use crate::stages::policy::{Hold, Policy, PolicyConfig, PolicyStats, Verdict};
use crate::stages::reassembly::{Reassembler, ReassemblyConfig, ReassemblyLimits, ReassemblyStats};
use crate::stages::redcap::{
    ApiCall, ApiRequestSelector, ClientAddressing, FormBody, KeepRawToken, RedcapConfig,
    RedcapStats,
};

/// How often (in capture time) idle connections are looked for.
const EXPIRY_INTERVAL: Span = Span::from_secs(1);
/// How often waiting calls are looked at when no call has finished.
const RELEASE_CHECK_INTERVAL: Span = Span::from_millis(100);

/// What the stages are built from: each stage's own section, and the two facts from elsewhere
/// that they need. The configuration file's assembly hands this out (`Config::pipeline`).
#[derive(Clone, Copy, Debug)]
pub struct PipelineConfig<'a> {
    pub(crate) reassembly: &'a ReassemblyConfig,
    pub(crate) http: &'a HttpConfig,
    pub(crate) redcap: &'a RedcapConfig,
    pub(crate) policy: &'a PolicyConfig,
    pub(crate) health: &'a HealthConfig,
    pub(crate) enforcement: &'a EnforcementConfig,
    /// The web server's ports (`capture.ports`): they orient connections whose start (the SYN)
    /// was not captured.
    pub(crate) server_ports: &'a [u16],
    /// Whether calls keep their raw token until a decision is acted on: only when a suspend
    /// hook asks for it (`hooks.suspend[].pass_raw_token`).
    pub(crate) keep_raw: KeepRawToken,
}

pub struct Pipeline {
    decode_stats: DecodeStats,
    reassembler: Reassembler,
    http: HttpTracker<ApiRequestSelector>,
    exchanges: Vec<HttpExchange<FormBody>>,
    key: SiteKey,
    /// Whether calls hold their raw token for the suspend hooks (`hooks.suspend[].pass_raw_token`).
    keep_raw: KeepRawToken,
    clients: ClientAddressing,
    redcap_stats: RedcapStats,
    policy: Policy,
    health: ResponsivenessDetector,
    enforcer: Enforcer,
    /// Changes of the server's state not yet taken by the caller.
    health_changes: Vec<HealthChange>,
    /// The newest packet time seen: the pipeline's notion of now.
    clock: Timestamp,
    next_expiry: Timestamp,
    next_release_check: Timestamp,
    /// Connections the HTTP stage found releasable, between taking and handling them.
    releasable: Vec<Releasable>,
    /// What a live capture is asked to do; kept only when one listens.
    capture_requests: VecDeque<CaptureRequest>,
    capture_listens: bool,
    /// Other web hosts sharing the windows (`[shared]`); `None` on a host alone.
    sharing: Option<Sharing>,
}

/// The windows shared with other web hosts: their calls merged in, this host's to publish.
struct Sharing {
    cluster: Cluster,
    outbox: Outbox,
    /// A peer's call or watermark came in since the policy was last looked at.
    news: bool,
}

/// What the pipeline asks of a live capture that copies connections on its own judgement (the
/// kernel probe), so that it copies what the pipeline reads and little else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureRequest {
    /// Nothing on this connection is worth copying until the client's next request, which the
    /// classifier then tracks afresh.
    StopCopying { client: Endpoint, server: Endpoint },
    /// The client's next request was copied before the capture stopped: copy the connection
    /// again, from these starts.
    CopyAgain(ResumedEarly),
}

/// Requests kept for a live capture that has not taken them (it takes them after every batch;
/// past this, the oldest are dropped: a missed `StopCopying` only costs copying).
const MAX_CAPTURE_REQUESTS: usize = 65_536;

/// Every stage's counters, for reports and telemetry.
pub struct PipelineStats<'a> {
    pub(crate) decode: &'a DecodeStats,
    pub reassembly: &'a ReassemblyStats,
    pub http: &'a HttpStats,
    pub(crate) redcap: &'a RedcapStats,
    pub policy: &'a PolicyStats,
    pub(crate) health: &'a HealthStats,
}

impl PipelineStats<'_> {
    /// Every non-zero counter of input the pipeline rejected, lost, could only partly use or read
    /// only through leniency, named `stage.reason`: what an admin needs to judge how complete a
    /// report is. Connections
    /// picked up mid-stream are not listed: a live capture starts that way on every connection
    /// already open, and a request whose start was missed is never reported (so it cannot be
    /// wrong). A start lost to a gap is listed (`http.request_starts_lost`).
    pub fn problems(&self) -> Vec<(&'static str, u64)> {
        let (d, r, h, c) = (self.decode, self.reassembly, self.http, self.redcap);
        let all = [
            ("decode.truncated_frames", d.truncated_frames),
            ("decode.unsupported_link", d.unsupported_link),
            ("decode.non_ip", d.non_ip),
            ("decode.ip_fragments", d.ip_fragments),
            ("decode.truncated_headers", d.truncated_headers),
            ("decode.malformed", d.malformed),
            ("decode.checksum_bad", d.checksum_bad),
            ("reassembly.gaps", r.gaps),
            ("reassembly.gap_bytes", r.gap_bytes),
            ("reassembly.buffer_overflows", r.buffer_overflows),
            ("reassembly.buffer_evictions", r.buffer_evictions),
            ("reassembly.evicted_connections", r.evicted_connections),
            ("reassembly.unconfirmed_evicted", r.unconfirmed_evicted),
            ("reassembly.rst_out_of_window", r.rst_out_of_window),
            ("reassembly.syns_on_open", r.syns_on_open),
            ("http.bad_request_head", h.bad_request_head),
            ("http.bad_response_head", h.bad_response_head),
            ("http.head_too_large", h.head_too_large),
            ("http.heads_skimmed", h.heads_skimmed),
            ("http.lenient_request_heads", h.lenient_request_heads),
            ("http.too_many_headers", h.too_many_headers),
            ("http.bad_content_length", h.bad_content_length),
            ("http.bad_chunk", h.bad_chunk),
            ("http.request_starts_lost", h.request_starts_lost),
            ("http.unmatched_responses", h.unmatched_responses),
            ("http.pending_overflow", h.pending_overflow),
            ("http.state_budget_resets", h.state_budget_resets),
            ("http.resyncs", h.resyncs),
            ("http.decode_failed", h.decode_failed),
            ("http.decode_capped", h.decode_capped),
            ("http.not_http", h.not_http),
            ("http.h2_hpack_errors", h.h2_hpack_errors),
            ("http.h2_frame_too_large", h.h2_frame_too_large),
            ("http.h2_too_many_streams", h.h2_too_many_streams),
            ("http.h2_gaps", h.h2_gaps),
            ("http.h2_protocol_errors", h.h2_protocol_errors),
            ("redcap.incomplete", c.incomplete),
            ("redcap.token_missing", c.token_missing),
            ("redcap.token_malformed", c.token_malformed),
            ("redcap.token_unreadable", c.token_unreadable),
            (
                "redcap.unsupported_content_type",
                c.unsupported_content_type,
            ),
            ("redcap.malformed_multipart", c.malformed_multipart),
            ("redcap.field_too_long", c.field_too_long),
            ("redcap.input_vars_exceeded", c.input_vars_exceeded),
            ("redcap.body_gap", c.body_gap),
            ("redcap.proxy_header_missing", c.proxy_header_missing),
            ("redcap.proxy_header_unparsable", c.proxy_header_unparsable),
            ("policy.evicted_tokens", self.policy.evicted_tokens),
        ];
        all.into_iter().filter(|&(_, n)| n > 0).collect()
    }
}

impl Pipeline {
    pub fn new(config: PipelineConfig<'_>, key: SiteKey) -> Pipeline {
        let r = &config.reassembly;
        let reassembler = Reassembler::new(ReassemblyLimits {
            max_connections: r.max_connections,
            max_buffered_per_direction: r.max_buffered_bytes_per_direction,
            max_buffered_total: r.max_buffered_bytes_total,
            idle_timeout: r.idle_timeout.span(),
            server_ports: config.server_ports.to_vec(),
            // An eighth of the table for connections the server has not answered: a flood of
            // SYNs or forged segments cycles through these slots only.
            max_unconfirmed: (r.max_connections / 8).max(1),
        });
        let h = &config.http;
        let http = HttpTracker::new(
            HttpLimits {
                max_head_bytes: h.max_head_bytes,
                max_headers: h.max_headers,
                max_pending_requests: h.max_pending_requests,
                max_decoded_body_bytes: h.max_decoded_body_bytes,
                max_state_bytes_total: h.max_state_bytes_total,
            },
            ApiRequestSelector::new(config.redcap.api_paths.clone())
                .with_max_input_vars(config.redcap.max_input_vars)
                .with_site_key(key.clone()),
        );
        Pipeline {
            decode_stats: DecodeStats::default(),
            reassembler,
            http,
            exchanges: Vec::new(),
            key,
            keep_raw: config.keep_raw,
            clients: config.redcap.client_addressing(),
            redcap_stats: RedcapStats::default(),
            policy: Policy::new(config.policy),
            health: ResponsivenessDetector::new(config.health.clone()),
            enforcer: Enforcer::new(config.enforcement.clone()),
            health_changes: Vec::new(),
            clock: Timestamp::default(),
            next_expiry: Timestamp::default(),
            next_release_check: Timestamp::default(),
            releasable: Vec::new(),
            capture_requests: VecDeque::new(),
            capture_listens: false,
            sharing: None,
        }
    }

    /// Shares the policy's windows with other web hosts (`[shared]`): from now on every call
    /// this host serves is also put in the outbox ([`take_batch`](Self::take_batch)), the
    /// peers' batches ([`receive_from_peer`](Self::receive_from_peer)) fill the windows, and
    /// calls are judged only once every live peer has published the calls that started earlier.
    pub fn share_with_peers(&mut self, config: ClusterConfig) {
        let outbox = Outbox::new(config.host.clone(), config.instance);
        self.sharing = Some(Sharing {
            cluster: Cluster::new(config, self.clock),
            outbox,
            news: false,
        });
    }

    /// A batch another web host published (or this host's previous instance, read back at
    /// start): its calls count in the windows, and its watermark lets calls be judged; verdicts
    /// of this host's calls that were waiting for it come out. `now` is on the packets' clock.
    pub fn receive_from_peer(
        &mut self,
        batch: Batch,
        now: Timestamp,
        out: &mut impl FnMut(Verdict),
    ) {
        self.advance_clock(now);
        let Some(sharing) = &mut self.sharing else {
            return;
        };
        sharing.cluster.receive(batch, self.clock);
        while let Some(call) = sharing.cluster.poll_call() {
            self.policy.push_from_peer(call);
        }
        sharing.news = true;
        self.release(out);
    }

    /// This host's calls since the last batch, with its watermark: the start of its oldest
    /// request still open or call not yet judged, or the packets' clock when there is none.
    /// Holding the watermark before undecided calls makes decisions causal across hosts: a
    /// peer judges a later call of the token only after this host's decision about the earlier
    /// one (a suspension) is on the stream. `None` when nothing is shared.
    pub(crate) fn take_batch(&mut self) -> Option<Batch> {
        let open = self.http.oldest_open_exchange();
        let undecided = self.policy.oldest_own_waiting();
        let clock = self.clock;
        let sharing = self.sharing.as_mut()?;
        let watermark = [open, undecided]
            .into_iter()
            .flatten()
            .fold(clock, Timestamp::min);
        Some(sharing.outbox.take_batch(clock, watermark))
    }

    /// Whether this host's calls wait to be published.
    pub(crate) fn has_batch(&self) -> bool {
        self.sharing.as_ref().is_some_and(|s| s.outbox.has_calls())
    }

    /// The merge of the peers' calls, when windows are shared.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.sharing.as_ref().map(|s| &s.cluster)
    }

    /// The next thing that happened to a peer (lost, joined).
    pub(crate) fn poll_peer_event(&mut self) -> Option<PeerEvent> {
        self.sharing.as_mut()?.cluster.poll_event()
    }

    /// Applies what can change while running (a reload): the policy's rules and heavy
    /// thresholds, the health thresholds, the enforcement settings, and whether calls keep their
    /// raw token for the suspend hooks (when no hook wants it any more, calls waiting in the
    /// reorder buffer drop theirs at once). Per-token windows,
    /// suspensions, the health state and every connection in flight are kept. What the pipeline
    /// was built from otherwise (paths, ports, limits, the key) is not changed here: the
    /// configuration's assembly says which changes need a restart.
    pub(crate) fn reconfigure(&mut self, config: PipelineConfig<'_>) {
        self.policy.reconfigure(config.policy);
        self.health.reconfigure(config.health.clone());
        self.enforcer.reconfigure(config.enforcement.clone());
        self.keep_raw = config.keep_raw;
        if self.keep_raw == KeepRawToken::Never {
            self.policy.drop_raw_tokens();
        }
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
        let resets = reassembler.stats().reset_closed;
        reassembler.push(segment, &mut |event| http.on_event(&event, exchanges));
        if segment.flags.rst && reassembler.stats().reset_closed > resets {
            // A reset within its sender's window: the kernel leaves a client's RST (which it
            // cannot check) to user space, so the copy stops here. Which end is the client is
            // the reassembler's knowledge; the wrong order finds no flow and does nothing.
            for (client, server) in [(segment.src, segment.dst), (segment.dst, segment.src)] {
                self.request_capture(CaptureRequest::StopCopying { client, server });
            }
        }
        self.stop_reading_releasable();
        self.release(out);
    }

    /// Queues a request for the live capture, if one listens (bounded: the oldest goes).
    fn request_capture(&mut self, request: CaptureRequest) {
        if !self.capture_listens {
            return;
        }
        if self.capture_requests.len() >= MAX_CAPTURE_REQUESTS {
            self.capture_requests.pop_front();
        }
        self.capture_requests.push_back(request);
    }

    /// A live capture that copies connections on its own judgement listens for
    /// [`CaptureRequest`]s (offline, and libpcap, nobody does: then none are kept).
    pub fn listen_for_capture_requests(&mut self) {
        self.capture_listens = true;
    }

    /// The next thing the live capture is asked to do.
    pub fn poll_capture_request(&mut self) -> Option<CaptureRequest> {
        self.capture_requests.pop_front()
    }

    /// Connections with nothing worth reading until the client's next request: reassembly stops
    /// passing their bytes on (and the capture is asked to stop copying them).
    fn stop_reading_releasable(&mut self) {
        let Pipeline {
            reassembler,
            http,
            exchanges,
            releasable,
            clock,
            ..
        } = self;
        http.take_releasable(releasable);
        let mut stopped = Vec::new();
        for r in releasable.drain(..) {
            let at = *clock;
            if reassembler.release(r.client, r.server, r.client_remaining, at, &mut |event| {
                http.on_event(&event, exchanges)
            }) {
                stopped.push(CaptureRequest::StopCopying {
                    client: r.client,
                    server: r.server,
                });
            }
        }
        let resumed = reassembler
            .take_resumed_early()
            .map(CaptureRequest::CopyAgain)
            .collect::<Vec<_>>();
        for request in stopped.into_iter().chain(resumed) {
            self.request_capture(request);
        }
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
            self.note_peer_offences();
            let verdict = self.enforce(verdict);
            out(verdict);
        }
        self.note_peer_offences();
    }

    pub fn stats(&self) -> PipelineStats<'_> {
        PipelineStats {
            decode: &self.decode_stats,
            reassembly: self.reassembler.stats(),
            http: self.http.stats(),
            redcap: &self.redcap_stats,
            policy: self.policy.stats(),
            health: self.health.stats(),
        }
    }

    /// The server's responsiveness as judged so far, and who loads it.
    pub(crate) fn health(&self) -> &ResponsivenessDetector {
        &self.health
    }

    /// Connections reassembly tracks now, and tokens whose rate windows the policy holds.
    pub fn tracked(&self) -> (usize, usize) {
        (self.reassembler.connections(), self.policy.tracked_tokens())
    }

    /// The enforcement stage, for the edge that acts on what it does: suspensions restored after a
    /// restart, lifted or added by an admin.
    pub(crate) fn enforcer_mut(&mut self) -> &mut Enforcer {
        &mut self.enforcer
    }

    /// Takes note of one canary probe (see [`ResponsivenessDetector::observe_canary`]); `ts` is
    /// on the packets' clock.
    pub(crate) fn observe_canary(&mut self, ts: Timestamp, latency: Option<Span>) {
        self.health.observe_canary(ts, latency);
    }

    /// Takes the changes of the server's state (degraded, recovered) since the last call.
    pub(crate) fn take_health_changes(&mut self) -> std::vec::Drain<'_, HealthChange> {
        self.health_changes.drain(..)
    }

    fn advance_clock(&mut self, ts: Timestamp) {
        // Packets from several interfaces may be slightly out of order; time never goes back.
        if ts <= self.clock {
            return;
        }
        self.clock = ts;
        if let Some(change) = self.health.tick(ts) {
            self.health_changes.push(change);
        }
        if self.enforcer.poll_timeout().is_some_and(|end| end <= ts) {
            self.enforcer.handle_timeout(ts);
        }
        if let Some(sharing) = &mut self.sharing
            && sharing.cluster.poll_timeout().is_some_and(|end| end <= ts)
        {
            // A silent peer holds nothing back any more: what waited for it may go.
            sharing.cluster.handle_timeout(ts);
            sharing.news = true;
        }
        if ts >= self.next_expiry {
            self.next_expiry = ts.plus(EXPIRY_INTERVAL);
            let Pipeline {
                reassembler,
                http,
                exchanges,
                ..
            } = self;
            reassembler.expire(ts, &mut |event| http.on_event(&event, exchanges));
            self.enforcer.forget_idle(ts);
            self.policy.forget_idle(ts);
        }
    }

    /// Turns finished exchanges into calls and passes on the verdicts that are due.
    fn release(&mut self, out: &mut impl FnMut(Verdict)) {
        let peer_news = self
            .sharing
            .as_mut()
            .is_some_and(|s| std::mem::take(&mut s.news));
        let calls_finished = !self.exchanges.is_empty() || peer_news;
        for exchange in self.exchanges.drain(..) {
            if exchange
                .response
                .as_ref()
                .is_some_and(|r| r.is_web_server_refusal())
            {
                self.redcap_stats.web_server_refusals += 1;
                continue;
            }
            let origin = self.clients.resolve(exchange.client, &exchange.request);
            let mut call = ApiCall::from_exchange(exchange, &self.key, self.keep_raw);
            self.redcap_stats.apply_origin(&mut call, origin);
            self.redcap_stats.count(&call);
            // Health is judged as calls finish, not after the policy's reorder wait.
            self.health.observe(&call);
            if let Some(sharing) = &mut self.sharing {
                sharing.outbox.push(&call);
            }
            self.policy.push(call);
        }
        // Which requests are still open is worth a look (it visits every connection) when a call
        // finished, or now and then so that the reorder window runs out for a hanging request.
        if !self.policy.has_waiting() || (!calls_finished && self.clock < self.next_release_check) {
            return;
        }
        self.next_release_check = self.clock.plus(RELEASE_CHECK_INTERVAL);
        // Peers' calls that started earlier may still come: wait for every live peer's
        // watermark too.
        let peers_hold = self.sharing.as_ref().and_then(|s| s.cluster.hold());
        let hold = Hold::new(&self.http).and_all_since(peers_hold);
        // Peers' offences are noted in the order the policy met them, before the verdicts of
        // later calls are acted on.
        let mut due = Vec::new();
        while let Some(verdict) = self.policy.poll(self.clock, &hold) {
            due.extend(self.policy.take_peer_offences().map(Due::PeerOffence));
            due.push(Due::Verdict(verdict));
        }
        due.extend(self.policy.take_peer_offences().map(Due::PeerOffence));
        for item in due {
            match item {
                Due::PeerOffence((token, at)) => self.enforcer.note_offence(token, at),
                Due::Verdict(verdict) => out(self.enforce(verdict)),
            }
        }
    }

    /// Peers' calls judged in the shared windows escalate here as they would on one host.
    fn note_peer_offences(&mut self) {
        for (token, at) in self.policy.take_peer_offences() {
            self.enforcer.note_offence(token, at);
        }
    }

    /// Decides about a call that broke a rule, in the light of the server's health now.
    fn enforce(&mut self, mut verdict: Verdict) -> Verdict {
        if verdict.violations.is_empty() {
            return verdict;
        }
        if let Ok(identity) = &verdict.call.token {
            verdict.while_suspended = self.enforcer.held_at(
                identity.fingerprint,
                verdict.call.ts_start,
                verdict.violations.len(),
            );
        }
        let load_share = match &verdict.call.token {
            Ok(identity) => self.health.load_share(identity.fingerprint, self.clock),
            Err(_) => None,
        };
        let view = HealthView {
            degraded: self.health.is_degraded(),
            assessment: self.health.assessment(),
            load_share,
        };
        verdict.decision = self.enforcer.decide(&verdict, &view);
        verdict
    }
}

/// What one release round leaves to act on, in the order the policy met it.
enum Due {
    PeerOffence((TokenFingerprint, Timestamp)),
    Verdict(Verdict),
}

#[cfg(test)]
pub(crate) mod sample;
#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::sample::{CLIENT, SERVER, request_by, segment_from, violations};
    use super::*;
    use crate::commands::config::Config;
    use crate::shared::model::Endpoint;
    use crate::shared::token::TokenProblem;

    fn segment(ts_ms: u64, to_server: bool, seq: u32, payload: &[u8]) -> TcpSegment<'_> {
        segment_from(CLIENT, ts_ms, to_server, seq, payload)
    }

    fn request() -> String {
        let body = "token=0123456789ABCDEF0123456789ABCDEF&content=version";
        format!(
            "POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// One complete API exchange (at 10 ms) on a connection that stays open.
    fn one_call(pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
        pipeline.push_segment(&segment(10, true, 1000, request().as_bytes()), out);
        pipeline.push_segment(&segment(15, false, 5000, response), out);
    }

    /// One complete API exchange (at 20 ms) on another connection.
    fn one_call_later(pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
        let other = Endpoint {
            port: 40002,
            ..CLIENT
        };
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
        pipeline.push_segment(
            &segment_from(other, 20, true, 1000, request().as_bytes()),
            out,
        );
        pipeline.push_segment(&segment_from(other, 25, false, 5000, response), out);
    }

    /// An API request (at 0 ms) from another client that is never answered.
    fn hanging_request(pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
        let other = Endpoint {
            port: 40001,
            ..CLIENT
        };
        pipeline.push_segment(
            &segment_from(other, 0, true, 7000, request().as_bytes()),
            out,
        );
    }

    #[test]
    fn a_call_is_released_as_soon_as_no_earlier_request_is_open() {
        let mut pipeline =
            Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([7; 32]));
        let mut released = Vec::new();
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        assert_eq!(released.len(), 1);
    }

    #[test]
    fn an_api_request_whose_head_cannot_be_read_is_a_call_counted_against_its_client() {
        let mut pipeline =
            Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([7; 32]));
        let mut released = Vec::new();
        let request = request().replace("Content-Length: ", "Content-Length: x");
        pipeline.push_segment(&segment(10, true, 1000, request.as_bytes()), &mut |v| {
            released.push(v)
        });
        let response = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        pipeline.push_segment(&segment(15, false, 5000, response), &mut |v| {
            released.push(v)
        });
        assert_eq!(released.len(), 1);
        let call = &released[0].call;
        assert_eq!(call.token, Err(TokenProblem::Unreadable));
        assert_eq!((call.path.as_str(), call.status), ("/api/", Some(400)));
        let stats = pipeline.stats();
        assert_eq!(stats.policy.calls_without_token, 1);
        assert!(stats.problems().contains(&("redcap.token_unreadable", 1)));
        assert!(stats.problems().contains(&("http.bad_content_length", 1)));
    }

    #[test]
    fn an_idle_tick_releases_a_call_held_by_a_hanging_request_after_the_reorder_window() {
        let config = Config::default();
        let mut pipeline = Pipeline::new(config.pipeline(), SiteKey::from_bytes([7; 32]));
        let mut released = Vec::new();
        hanging_request(&mut pipeline, &mut |v: Verdict| released.push(v));
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        assert!(released.is_empty(), "an earlier request may still finish");
        let start = Timestamp(1_700_000_000_000_000_000);
        pipeline.tick(start.plus(Span::from_secs(60)), &mut |v| released.push(v));
        assert!(released.is_empty(), "still within the reorder window");
        let wait = config.policy.reorder_window.span();
        pipeline.tick(start.plus(wait).plus(Span::from_secs(1)), &mut |v| {
            released.push(v)
        });
        // By then the hanging connection has also gone idle and its request is reported too,
        // first, as it started first.
        let order: Vec<_> = released
            .iter()
            .map(|v| (v.call.ts_start, v.call.status))
            .collect();
        assert_eq!(
            order,
            [
                (start, None),
                (start.plus(Span::from_millis(10)), Some(200))
            ]
        );
    }

    /// A configuration whose suspend hook asks for the raw token (or not).
    fn with_suspend_hook(pass_raw_token: bool) -> Config {
        let text = format!(
            "[[hooks.suspend]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"/bin/true\"\n\
             pass_raw_token = {pass_raw_token}\n"
        );
        Config::parse(&text, std::path::Path::new("hooks.toml")).unwrap()
    }

    fn held(released: &[Verdict]) -> Vec<bool> {
        released
            .iter()
            .map(|v| v.call.raw_token.is_held())
            .collect()
    }

    #[test]
    fn calls_keep_their_raw_token_only_when_a_suspend_hook_asks_for_it() {
        for (config, keep) in [
            (Config::default(), false),
            (with_suspend_hook(false), false),
            (with_suspend_hook(true), true),
        ] {
            let mut pipeline = Pipeline::new(config.pipeline(), SiteKey::from_bytes([7; 32]));
            let mut released = Vec::new();
            one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
            assert_eq!(held(&released), [keep]);
        }
    }

    #[test]
    fn a_reload_decides_anew_whether_raw_tokens_are_kept_and_drops_those_waiting() {
        let mut pipeline = Pipeline::new(
            with_suspend_hook(true).pipeline(),
            SiteKey::from_bytes([7; 32]),
        );
        let mut released = Vec::new();
        // The finished call waits in the reorder buffer behind the hanging request, holding its
        // raw token, when the reload removes the hook that wanted it.
        hanging_request(&mut pipeline, &mut |v: Verdict| released.push(v));
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        assert!(released.is_empty());
        pipeline.reconfigure(Config::default().pipeline());
        one_call_later(&mut pipeline, &mut |v: Verdict| released.push(v));
        pipeline.finish(&mut |v| released.push(v));
        assert_eq!(held(&released), [false, false, false]);

        let mut pipeline =
            Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([7; 32]));
        pipeline.reconfigure(with_suspend_hook(true).pipeline());
        let mut released = Vec::new();
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        assert_eq!(held(&released), [true], "a reload can turn keeping on");
    }

    #[test]
    fn a_tick_behind_the_packets_clock_changes_nothing() {
        let config = Config::default();
        let mut pipeline = Pipeline::new(config.pipeline(), SiteKey::from_bytes([7; 32]));
        let mut released = Vec::new();
        hanging_request(&mut pipeline, &mut |v: Verdict| released.push(v));
        one_call(&mut pipeline, &mut |v: Verdict| released.push(v));
        pipeline.tick(Timestamp(1), &mut |v| released.push(v));
        assert!(released.is_empty());
        pipeline.finish(&mut |v| released.push(v));
        assert_eq!(
            released.len(),
            2,
            "the hanging request is reported at the end too"
        );
    }

    #[test]
    fn two_hosts_sharing_their_calls_find_exactly_the_violations_of_one_host_seeing_all() {
        use crate::stages::cluster::ClusterConfig;
        // 60 calls of 3 tokens over 10 minutes, some heavy (unfiltered record exports), some
        // overlapping (a call starts before the previous one is answered), spread over two hosts
        // in no particular pattern.
        let mut state = 0x2545_f491_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut calls = Vec::new();
        let mut t = 0;
        for i in 0..60u16 {
            t += 1 + next(20_000);
            let token = next(3) as usize;
            let content = if next(4) == 0 { "record" } else { "version" };
            let host = next(2) as usize;
            let answer_after = 5 + next(3_000);
            calls.push((t, token, content, host, answer_after, 41000 + i));
        }
        // Every packet, in time order: (time, host, call index, is the request).
        let mut packets = Vec::new();
        for (i, &(t, _, _, host, after, _)) in calls.iter().enumerate() {
            packets.push((t, host, i, true));
            packets.push((t + after, host, i, false));
        }
        packets.sort();
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
        let segment_of = |&(t, _, i, is_request): &(u64, usize, usize, bool)| {
            let (_, token, content, _, _, port) = calls[i];
            let client = Endpoint { port, ..CLIENT };
            (t, client, is_request, request_by(token, content))
        };
        let key = SiteKey::from_bytes([9; 32]);
        // Suspending on violations alone: each host's health is its own (half the load each
        // here), the warning ladder and the suspensions are the cluster's.
        let mut config = Config::default();
        config.enforcement.mode = crate::stages::policy::enforce::EnforcementMode::OnViolation;

        let mut alone = Pipeline::new(config.pipeline(), key.clone());
        let mut all = Vec::new();
        for packet in &packets {
            let (t, client, is_request, request) = segment_of(packet);
            let seg = if is_request {
                segment_from(client, t, true, 1000, request.as_bytes())
            } else {
                segment_from(client, t, false, 5000, response)
            };
            alone.push_segment(&seg, &mut |v| all.push(v));
        }
        alone.finish(&mut |v| all.push(v));
        let expected = violations(&all);
        assert!(
            expected.len() >= 10,
            "the calls break the rules: {expected:?}"
        );

        let mut hosts: Vec<Pipeline> = (0..2)
            .map(|i| {
                let mut p = Pipeline::new(config.pipeline(), key.clone());
                p.share_with_peers(ClusterConfig {
                    host: format!("web{i}"),
                    instance: 1,
                    peer_timeout: Span::from_secs(5),
                });
                p
            })
            .collect();
        let mut served: [Vec<Verdict>; 2] = [Vec::new(), Vec::new()];
        let exchange = |hosts: &mut Vec<Pipeline>, served: &mut [Vec<Verdict>; 2], now| {
            for from in 0..2 {
                let batch = hosts[from].take_batch().unwrap();
                let to = 1 - from;
                hosts[to].receive_from_peer(batch, now, &mut |v| served[to].push(v));
            }
        };
        // What `run` does with a suspension a peer announces (through Redis, within a second):
        // the other host's enforcer holds the token too.
        let mut announced = [0usize; 2];
        let mut announce = |hosts: &mut Vec<Pipeline>, served: &[Vec<Verdict>; 2]| {
            for from in 0..2 {
                for v in &served[from][announced[from]..] {
                    let Some(d) = &v.decision else { continue };
                    if let crate::stages::policy::enforce::Action::Suspend { duration_s, .. } =
                        d.action
                    {
                        let until = v
                            .call
                            .ts_start
                            .plus(Span::from_millis((duration_s * 1000.0) as u64));
                        let enforcer = hosts[1 - from].enforcer_mut();
                        enforcer.restore(d.token_fp, Some(until));
                        enforcer.note_suspension(d.token_fp, v.call.ts_start);
                    }
                }
                announced[from] = served[from].len();
            }
        };
        let base = Timestamp(1_700_000_000_000_000_000);
        for packet in &packets {
            let (t, client, is_request, request) = segment_of(packet);
            let host = packet.1;
            let seg = if is_request {
                segment_from(client, t, true, 1000, request.as_bytes())
            } else {
                segment_from(client, t, false, 5000, response)
            };
            let now = base.plus(Span::from_millis(t));
            hosts[host].push_segment(&seg, &mut |v| served[host].push(v));
            hosts[1 - host].tick(now, &mut |v| served[1 - host].push(v));
            exchange(&mut hosts, &mut served, now);
            announce(&mut hosts, &served);
        }
        // Both idle past the last call: every watermark passes every call.
        let end = base.plus(Span::from_millis(t + 10_000));
        for (i, host) in hosts.iter_mut().enumerate() {
            host.tick(end, &mut |v| served[i].push(v));
        }
        exchange(&mut hosts, &mut served, end);
        announce(&mut hosts, &served);
        for (i, host) in hosts.iter_mut().enumerate() {
            host.finish(&mut |v| served[i].push(v));
        }
        let mut both = served[0].clone();
        both.extend(served[1].iter().cloned());
        assert_eq!(
            both.len(),
            60,
            "each call has one verdict, on the host that served it"
        );
        for (i, verdicts) in served.iter().enumerate() {
            let n = calls.iter().filter(|c| c.3 == i).count();
            assert_eq!(verdicts.len(), n);
        }
        assert_eq!(violations(&both), expected);
        // Peers' offences count here too, so each token climbs the same warning ladder.
        let decisions = |verdicts: &[Verdict]| {
            let mut found: Vec<_> = verdicts
                .iter()
                .filter_map(|v| {
                    let d = v.decision.as_ref()?;
                    Some((
                        v.call.ts_start,
                        format!("{:?}", d.action),
                        d.evidence.offences_remembered,
                    ))
                })
                .collect();
            found.sort();
            found
        };
        let expected_decisions = decisions(&all);
        assert!(
            expected_decisions
                .iter()
                .any(|d| d.1.starts_with("Suspend")),
            "tokens offend more than once: {expected_decisions:?}"
        );
        assert_eq!(decisions(&both), expected_decisions);
        for host in &hosts {
            let stats = host.stats();
            assert_eq!(stats.policy.late_peer_calls, 0, "no call came too late");
            assert_eq!(stats.policy.calls + stats.policy.peer_calls, 60);
        }
        // Without sharing, each host alone misses violations.
        let mut separate = Vec::new();
        for i in 0..2 {
            let mut p = Pipeline::new(config.pipeline(), key.clone());
            for packet in packets.iter().filter(|p| p.1 == i) {
                let (t, client, is_request, request) = segment_of(packet);
                let seg = if is_request {
                    segment_from(client, t, true, 1000, request.as_bytes())
                } else {
                    segment_from(client, t, false, 5000, response)
                };
                p.push_segment(&seg, &mut |v| separate.push(v));
            }
            p.finish(&mut |v| separate.push(v));
        }
        assert!(violations(&separate).len() < expected.len());
    }

    /// An Ethernet frame from `src` to `dst` with a correct TCP checksum (as the wire has it).
    fn frame(
        src: Endpoint,
        dst: Endpoint,
        seq: u32,
        ack: u32,
        syn: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip, dst.ip) else {
            unreachable!("IPv4 endpoints")
        };
        let builder = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(s.octets(), d.octets(), 64)
            .tcp(src.port, dst.port, seq, 65535);
        let builder = if syn { builder.syn() } else { builder };
        let builder = if ack == 0 { builder } else { builder.ack(ack) };
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn a_decoy_segment_with_a_wrong_checksum_does_not_take_the_real_requests_place() {
        let mut pipeline =
            Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([3; 32]));
        let real = request();
        // The same bytes but another token, in the same sequence space: the server's kernel
        // drops it for its checksum, and reads the real one that follows.
        let decoy = real.replace(
            "0123456789ABCDEF0123456789ABCDEF",
            "FEDCBA9876543210FEDCBA9876543210",
        );
        let mut decoy_frame = frame(CLIENT, SERVER, 1001, 5001, false, decoy.as_bytes());
        let check_at = 14 + 20 + 16;
        decoy_frame[check_at] ^= 0x55;
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
        let frames = [
            frame(CLIENT, SERVER, 1000, 0, true, b""),
            frame(SERVER, CLIENT, 5000, 1001, true, b""),
            frame(CLIENT, SERVER, 1001, 5001, false, b""),
            decoy_frame,
            frame(CLIENT, SERVER, 1001, 5001, false, real.as_bytes()),
            frame(
                SERVER,
                CLIENT,
                5001,
                1001 + real.len() as u32,
                false,
                response,
            ),
        ];
        let mut verdicts = Vec::new();
        for (i, data) in frames.iter().enumerate() {
            let f = Frame {
                ts: Timestamp(1_700_000_000_000_000_000 + i as u64 * 1_000_000),
                link: crate::stages::decode::LinkType::ETHERNET,
                data,
            };
            pipeline.push_frame(&f, &mut |v| verdicts.push(v));
        }
        pipeline.finish(&mut |v| verdicts.push(v));
        assert_eq!(verdicts.len(), 1);
        let real_token =
            crate::shared::token::RawToken::parse(b"0123456789ABCDEF0123456789ABCDEF").unwrap();
        assert_eq!(
            verdicts[0].call.token.as_ref().map(|t| t.fingerprint).ok(),
            Some(SiteKey::from_bytes([3; 32]).fingerprint(&real_token)),
            "the call carries the token the server read"
        );
        assert_eq!(pipeline.stats().decode.checksum_bad, 1);
    }

    const TOKEN_A: &str = "0123456789ABCDEF0123456789ABCDEF";
    const TOKEN_B: &str = "FEDCBA9876543210FEDCBA9876543210";

    fn request_of(token: &str) -> String {
        request().replace(TOKEN_A, token)
    }

    /// A call of `token` on its own connection (client port `port`), started at `ts_ms` and
    /// answered 5 ms later.
    fn call_of(
        pipeline: &mut Pipeline,
        token: &str,
        port: u16,
        ts_ms: u64,
        out: &mut impl FnMut(Verdict),
    ) {
        let client = Endpoint { port, ..CLIENT };
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n14.0";
        pipeline.push_segment(
            &segment_from(client, ts_ms, true, 1000, request_of(token).as_bytes()),
            out,
        );
        pipeline.push_segment(&segment_from(client, ts_ms + 5, false, 5000, response), out);
    }

    fn violations_ms(released: &[Verdict]) -> Vec<(u64, &str, u32)> {
        let start = Timestamp(1_700_000_000_000_000_000);
        released
            .iter()
            .flat_map(|v| v.violations.iter())
            .map(|v| (v.ts.since(start).0 / 1_000_000, v.rule.as_str(), v.count))
            .collect()
    }

    #[test]
    fn a_hanging_request_whose_token_is_known_holds_back_only_that_tokens_calls() {
        let mut pipeline =
            Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([7; 32]));
        let mut released = Vec::new();
        // Token A's request is read whole (head and body) and never answered.
        hanging_request(&mut pipeline, &mut |v: Verdict| released.push(v));
        // Token B breaks the rate rule meanwhile, on connections of the same client address.
        for i in 0..4 {
            call_of(
                &mut pipeline,
                TOKEN_B,
                40010 + i,
                10 + 10 * u64::from(i),
                &mut |v| released.push(v),
            );
        }
        // Another call of A's, after the hanging one: it must wait for it.
        call_of(&mut pipeline, TOKEN_A, 40020, 60, &mut |v| released.push(v));
        assert_eq!(
            violations_ms(&released),
            [(40, "api_calls", 4)],
            "B's violation is out without waiting for A's hanging request"
        );
        assert_eq!(released.len(), 4, "A's later call still waits");
        pipeline.finish(&mut |v| released.push(v));
        assert_eq!(released.len(), 6);
        assert_eq!(pipeline.stats().policy.late_calls, 0);
    }

    #[test]
    fn a_request_whose_body_never_comes_holds_everything_only_for_unknown_token_hold() {
        let config = Config::default();
        let hold = config.policy.unknown_token_hold.span();
        assert!(hold < config.policy.reorder_window.span());
        let mut pipeline = Pipeline::new(config.pipeline(), SiteKey::from_bytes([7; 32]));
        let mut released = Vec::new();
        // Slowloris: the head promises a body that never comes, so its token is unknown.
        let slow = Endpoint {
            port: 40001,
            ..CLIENT
        };
        let head = "POST /api/ HTTP/1.1\r\nHost: x\r\n\
                    Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 60\r\n\r\n";
        pipeline.push_segment(
            &segment_from(slow, 0, true, 7000, head.as_bytes()),
            &mut |v| released.push(v),
        );
        for i in 0..4 {
            call_of(
                &mut pipeline,
                TOKEN_B,
                40010 + i,
                10 + 10 * u64::from(i),
                &mut |v| released.push(v),
            );
        }
        assert!(
            released.is_empty(),
            "the open request may yet carry token B"
        );
        let start = Timestamp(1_700_000_000_000_000_000);
        pipeline.tick(start.plus(hold).plus(Span::from_millis(200)), &mut |v| {
            released.push(v)
        });
        assert_eq!(violations_ms(&released), [(40, "api_calls", 4)]);
        assert!(
            start.plus(hold).plus(Span::from_millis(200))
                < start.plus(config.policy.reorder_window.span())
        );
    }
}

use super::*;
use crate::shared::model::Span;
use crate::stages::policy::{HeavyReason, Policy, PolicyConfig};
use crate::stages::redcap::sample::{at, call, fingerprint};

fn cluster(host: &str) -> Cluster {
    Cluster::new(
        ClusterConfig {
            host: host.into(),
            instance: 1,
            peer_timeout: Span::from_secs(5),
        },
        at(0),
    )
}

fn batch(host: &str, instance: u64, sent: u64, watermark: u64, seqs: &[u64]) -> Batch {
    Batch {
        host: host.into(),
        instance,
        sent_at: at(sent),
        watermark: at(watermark),
        calls: seqs
            .iter()
            .map(|&seq| (seq, SharedCall::of(&call(1, 10 + seq))))
            .collect(),
    }
}

fn received(c: &mut Cluster) -> Vec<Timestamp> {
    std::iter::from_fn(|| c.poll_call())
        .map(|c| c.ts_start)
        .collect()
}

#[test]
fn the_shared_form_keeps_what_the_policy_reads_and_no_token_text() {
    let mut original = call(7, 100);
    original.params.content = Some("record".into());
    original.params.action = Some("export".into());
    original.params.records = 0;
    original.status = Some(200);
    original.response_bytes = Some(123_456_789);
    let shared = SharedCall::of(&original);
    let json = serde_json::to_string(&shared).unwrap();
    assert!(!json.contains("T7"), "no masked token travels: {json}");
    assert!(json.contains(&fingerprint(7).to_string()));
    let back: SharedCall = serde_json::from_str(&json).unwrap();
    assert_eq!(back, shared);
    let call = back.into_call();
    assert_eq!(call.ts_start, original.ts_start);
    assert_eq!(call.client, original.client);
    assert_eq!(call.status, original.status);
    assert_eq!(
        call.token.as_ref().map(|t| t.fingerprint).ok(),
        Some(fingerprint(7))
    );
    // The policy judges the copy as it judges the original.
    let policy = Policy::new(&PolicyConfig::default());
    assert_eq!(policy.classify(&call), policy.classify(&original));
    assert_eq!(
        policy.classify(&call),
        Some(HeavyReason::ResponseSize),
        "a large response is heavy on every host"
    );
    let mut small = original.clone();
    small.response_bytes = Some(10);
    small.response_wire_bytes = Some(10);
    let copy = SharedCall::of(&small).into_call();
    assert_eq!(policy.classify(&copy), policy.classify(&small));
    assert!(policy.classify(&copy).is_some(), "an unfiltered export");
}

#[test]
fn a_call_without_a_token_travels_with_its_problem() {
    let mut original = call(1, 5);
    original.token = Err(TokenProblem::Malformed);
    original.status = Some(403);
    let back = SharedCall::of(&original).into_call();
    assert_eq!(back.token, Err(TokenProblem::Malformed));
    assert_eq!(back.status, Some(403));
}

#[test]
fn an_over_long_parameter_from_a_peer_is_dropped() {
    let mut shared = SharedCall::of(&call(1, 5));
    shared.content = Some("x".repeat(10_000));
    assert_eq!(shared.into_call().params.content, None);
}

#[test]
fn a_peer_s_calls_are_passed_on_once_however_often_they_are_read() {
    let mut c = cluster("a");
    c.receive(batch("b", 9, 20, 20, &[0, 1]), at(20));
    // The same batch again (read twice, or published again after a lost reply), then one that
    // overlaps it.
    c.receive(batch("b", 9, 20, 20, &[0, 1]), at(20));
    c.receive(batch("b", 9, 21, 21, &[1, 2]), at(21));
    assert_eq!(received(&mut c), [at(10), at(11), at(12)]);
    assert_eq!(c.stats().calls_received, 3);
    assert_eq!(c.stats().calls_deduplicated, 3);
    assert_eq!(c.peers()[0].calls_received, 3);
}

#[test]
fn this_instance_s_own_calls_are_skipped_and_a_previous_instance_s_are_taken() {
    let mut c = cluster("a");
    c.receive(batch("a", 1, 1, 1, &[0]), at(1));
    assert!(received(&mut c).is_empty());
    // Calls of this host before its restart (another instance), read back at start.
    c.receive(batch("a", 0, 0, 0, &[0, 1]), at(1));
    assert_eq!(received(&mut c).len(), 2);
    assert_eq!(c.stats().host_name_conflicts, 0);
    assert_eq!(c.live_peers(), 1, "heard within the peer timeout");
}

#[test]
fn a_host_with_this_host_s_name_publishing_now_is_a_conflict() {
    let mut c = cluster("a");
    c.receive(batch("a", 2, 3, 3, &[0]), at(3));
    assert_eq!(c.stats().host_name_conflicts, 1);
}

#[test]
fn a_restarted_peer_numbers_its_calls_afresh() {
    let mut c = cluster("a");
    c.receive(batch("b", 1, 20, 20, &[0, 1, 2]), at(20));
    c.receive(batch("b", 2, 30, 30, &[0, 1]), at(30));
    assert_eq!(received(&mut c).len(), 5);
    assert_eq!(c.peers()[0].instance, 2);
}

#[test]
fn the_hold_is_the_lowest_watermark_of_the_live_peers() {
    let mut c = cluster("a");
    assert_eq!(c.hold(), None, "alone, nothing holds");
    c.receive(batch("b", 1, 20, 15, &[]), at(20));
    c.receive(batch("c", 1, 20, 18, &[]), at(20));
    assert_eq!(c.hold(), Some(at(15)));
    c.receive(batch("b", 1, 21, 19, &[]), at(21));
    assert_eq!(c.hold(), Some(at(18)));
    // A watermark never goes back.
    c.receive(batch("c", 1, 22, 10, &[]), at(22));
    assert_eq!(c.hold(), Some(at(18)));
}

#[test]
fn a_silent_peer_stops_holding_after_the_peer_timeout_and_is_reported_once() {
    let mut c = cluster("a");
    c.receive(batch("b", 1, 20, 15, &[]), at(20));
    assert_eq!(c.poll_event(), Some(PeerEvent::Joined { host: "b".into() }));
    assert_eq!(c.poll_timeout(), Some(at(25)));
    c.handle_timeout(at(24));
    assert_eq!(c.hold(), Some(at(15)));
    c.handle_timeout(at(25));
    assert_eq!(c.hold(), None);
    assert_eq!(c.poll_event(), Some(PeerEvent::Lost { host: "b".into() }));
    c.handle_timeout(at(26));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.stats().peers_lost, 1);
    assert!(!c.peers()[0].live);
    // It comes back: its late calls are still passed on, and it holds again.
    c.receive(batch("b", 1, 40, 39, &[0]), at(40));
    assert_eq!(c.poll_event(), Some(PeerEvent::Joined { host: "b".into() }));
    assert_eq!(received(&mut c), [at(10)]);
    assert_eq!(c.hold(), Some(at(39)));
}

#[test]
fn old_batches_read_back_at_start_hold_nothing() {
    let mut c = cluster("a");
    c.receive(batch("b", 1, 20, 20, &[0]), at(100));
    assert_eq!(received(&mut c).len(), 1);
    assert_eq!(c.hold(), None);
    assert_eq!(c.poll_event(), None);
}

#[test]
fn a_lost_peer_is_forgotten_after_an_hour() {
    let mut c = cluster("a");
    c.receive(batch("b", 1, 20, 20, &[]), at(20));
    c.handle_timeout(at(30));
    assert_eq!(c.peers().len(), 1);
    c.handle_timeout(at(20 + 3600));
    assert!(c.peers().is_empty());
}

#[test]
fn peers_past_the_limit_are_dropped_and_counted() {
    let mut c = cluster("a");
    for i in 0..MAX_PEERS + 3 {
        c.receive(batch(&format!("h{i}"), 1, 20, 20, &[0]), at(20));
    }
    assert_eq!(c.peers().len(), MAX_PEERS);
    assert_eq!(c.stats().peers_over_limit, 3);
    assert_eq!(received(&mut c).len(), MAX_PEERS);
}

#[test]
fn the_outbox_numbers_calls_in_order_across_batches() {
    let mut out = Outbox::new("a".into(), 5);
    out.push(&call(1, 1));
    out.push(&call(1, 2));
    let first = out.take_batch(at(3), at(2));
    assert_eq!((first.host.as_str(), first.instance), ("a", 5));
    assert_eq!(first.calls.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1]);
    assert!(!out.has_calls());
    out.push(&call(1, 4));
    let second = out.take_batch(at(5), at(5));
    assert_eq!(second.calls.iter().map(|c| c.0).collect::<Vec<_>>(), [2]);
    assert_eq!((second.sent_at, second.watermark), (at(5), at(5)));
    let heartbeat = out.take_batch(at(6), at(6));
    assert!(heartbeat.calls.is_empty());
}

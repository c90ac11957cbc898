use super::*;
use crate::shared::model::Span;
use crate::shared::token::TokenProblem;
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
    let mut wire = Vec::new();
    shared.encode(&mut wire);
    let masked = original.token.as_ref().unwrap().masked.0.as_bytes();
    assert!(
        !wire.windows(masked.len()).any(|w| w == masked),
        "no masked token travels: {wire:?}"
    );
    assert!(wire.windows(8).any(|w| w == fingerprint(7).0));
    let back = SharedCall::decode_all(&wire, 1).unwrap().remove(0);
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

/// Calls with every optional field present and absent, both address families, extreme numbers.
fn varied_calls() -> Vec<SharedCall> {
    let mut full = SharedCall::of(&call(3, 50));
    full.end = full.start + 1_234_567;
    full.client = "2001:db8::7".parse().unwrap();
    full.client_port = u16::MAX;
    full.status = Some(503);
    full.request_bytes = u64::MAX;
    full.response_bytes = Some(0);
    full.response_wire_bytes = Some(u64::MAX - 1);
    full.content = Some("record".into());
    full.action = Some("export".into());
    full.data_bytes = Some(77);
    full.records = u32::MAX;
    full.filter_logic = true;
    full.return_metadata_only = Some(false);
    full.all_records = Some(true);
    let mut bare = SharedCall::of(&call(4, 60));
    bare.fingerprint = None;
    bare.token_problem = Some(TokenProblem::Malformed);
    bare.status = None;
    bare.response_bytes = None;
    bare.response_wire_bytes = None;
    bare.content = None;
    bare.action = None;
    bare.start = u64::MAX;
    bare.end = u64::MAX;
    let mut other = full.clone();
    other.return_metadata_only = Some(true);
    other.all_records = Some(false);
    other.token_problem = Some(TokenProblem::Unreadable);
    other.client = "192.0.2.9".parse().unwrap();
    vec![SharedCall::of(&call(1, 10)), full, bare, other]
}

#[test]
fn calls_come_out_of_their_binary_form_as_they_went_in() {
    let calls = varied_calls();
    let mut bytes = Vec::new();
    for c in &calls {
        let before = bytes.len();
        c.encode(&mut bytes);
        assert!(bytes.len() - before <= MAX_ENCODED_CALL);
    }
    assert_eq!(SharedCall::decode_all(&bytes, calls.len()).unwrap(), calls);
    // A usual call is a few dozen bytes (its JSON was a few hundred).
    let mut one = Vec::new();
    SharedCall::of(&call(1, 10)).encode(&mut one);
    assert!(one.len() < 64, "{} bytes", one.len());
    // A parameter longer than a peer takes is left out, as the peer would drop it.
    let mut long = SharedCall::of(&call(1, 10));
    long.content = Some("x".repeat(MAX_PARAM_CHARS + 1));
    let mut bytes = Vec::new();
    long.encode(&mut bytes);
    let back = SharedCall::decode_all(&bytes, 1).unwrap();
    assert_eq!(back[0].content, None);
    assert_eq!(back[0].start, long.start);
}

#[test]
fn a_corrupt_or_hostile_entry_is_an_error_never_a_panic() {
    let calls = varied_calls();
    let mut bytes = Vec::new();
    for c in &calls {
        c.encode(&mut bytes);
    }
    let n = calls.len();
    assert_eq!(
        SharedCall::decode_all(&bytes[..bytes.len() - 1], n),
        Err(WireError::Truncated)
    );
    assert_eq!(
        SharedCall::decode_all(&bytes, n - 1),
        Err(WireError::Trailing)
    );
    assert_eq!(
        SharedCall::decode_all(&bytes, MAX_CALLS_PER_ENTRY + 1),
        Err(WireError::TooLarge)
    );
    assert_eq!(
        SharedCall::decode_all(&vec![0; 3 * MAX_ENCODED_CALL + 1], 3),
        Err(WireError::TooLarge),
        "more bytes than the calls claimed could take"
    );
    assert_eq!(
        SharedCall::decode_all(&[0xff, 0xff, 0], 1),
        Err(WireError::Invalid)
    );
    // A varint past 64 bits.
    let mut overflow = vec![0, 0];
    overflow.extend([0xff; 10]);
    assert_eq!(
        SharedCall::decode_all(&overflow, 1),
        Err(WireError::Invalid)
    );
    // Every prefix and every single-byte change of a valid entry: an error or calls, no panic.
    for cut in 0..bytes.len() {
        assert!(SharedCall::decode_all(&bytes[..cut], n).is_err());
    }
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..bytes.len() {
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut changed = bytes.clone();
            changed[i] = state as u8;
            let _ = SharedCall::decode_all(&changed, n);
        }
    }
}

/// The `shared_calls` fuzz target's committed seeds (`fuzz/seeds/shared_calls/`) are entries this
/// version writes: the number of calls (two bytes, little-endian), then their binary forms.
/// Written here, where calls can be made, rather than by `fuzz-seeds`; after a change of the form
/// `REDCAP_MONITOR_WRITE_SEEDS=1 cargo test -p monitor-daemon --lib fuzz_seeds` writes them again.
#[test]
fn the_fuzz_seeds_are_entries_this_version_writes() {
    let calls = varied_calls();
    let entry = |calls: &[SharedCall]| {
        let mut bytes = (calls.len() as u16).to_le_bytes().to_vec();
        for call in calls {
            call.encode(&mut bytes);
        }
        bytes
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/shared_calls");
    let write = std::env::var("REDCAP_MONITOR_WRITE_SEEDS").as_deref() == Ok("1");
    for (name, seed) in [
        ("export", entry(&calls[..1])),
        ("varied", entry(&calls[1..])),
        ("all", entry(&calls)),
    ] {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &seed).unwrap();
        }
        assert_eq!(
            std::fs::read(&path).ok().as_ref(),
            Some(&seed),
            "{} is not what this version writes: REDCAP_MONITOR_WRITE_SEEDS=1 cargo test \
             -p monitor-daemon --lib fuzz_seeds writes it",
            path.display()
        );
    }
}

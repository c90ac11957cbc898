//! Proves that the embedded kernel object is real: the kernel's verifier accepts the classifier,
//! BPF_PROG_TEST_RUN runs it on a hand-built TCP packet, it passes the packet on and it counts it
//! in the per-CPU `COUNTERS` map. Needs root (CAP_BPF, CAP_NET_ADMIN); it attaches nothing, so it
//! leaves no trace on the machine.

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use monitor_common::{COUNTERS_MAP, KernelCounter};
use redcap_monitor::KERNEL_OBJECT;

/// The TC verdict "pass the packet on" (`TC_ACT_OK` in linux/pkt_cls.h).
const TC_ACT_OK: u32 = 0;

/// How many times the kernel runs the program in one BPF_PROG_TEST_RUN call.
const RUNS: u32 = 3;

const SKIP_VAR: &str = "REDCAP_MONITOR_SKIP_ROOT_TESTS";

#[test]
fn classifier_passes_a_tcp_packet_and_counts_it() {
    if !may_load_kernel_programs() {
        return;
    }
    let mut ebpf = Ebpf::load(KERNEL_OBJECT).expect("parse the embedded kernel object");

    let classifier: &mut SchedClassifier = ebpf
        .program_mut("api_flow_classifier")
        .expect("the object has a program named api_flow_classifier")
        .try_into()
        .expect("api_flow_classifier is a TC classifier");
    classifier
        .load()
        .expect("the kernel verifier accepts api_flow_classifier");

    let before = packets_seen(&ebpf);
    let packet = ethernet_ipv4_tcp_packet();
    let classifier: &SchedClassifier = ebpf
        .program("api_flow_classifier")
        .expect("still there")
        .try_into()
        .expect("still a TC classifier");
    let result = classifier
        .test_run(TestRunOptions {
            data_in: Some(&packet),
            repeat: RUNS,
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN runs api_flow_classifier");

    assert_eq!(
        result.return_value, TC_ACT_OK,
        "the classifier must pass every packet on"
    );
    let after = packets_seen(&ebpf);
    assert_eq!(
        after,
        before + u64::from(RUNS),
        "PacketsSeen must count each of the {RUNS} runs"
    );
}

/// Sum of the `PacketsSeen` slot over all CPUs.
fn packets_seen(ebpf: &Ebpf) -> u64 {
    let counters: PerCpuArray<_, u64> = ebpf
        .map(COUNTERS_MAP)
        .expect("the object has the COUNTERS map")
        .try_into()
        .expect("COUNTERS is a per-CPU array of u64");
    counters
        .get(&(KernelCounter::PacketsSeen as u32), 0)
        .expect("read the PacketsSeen slot")
        .iter()
        .sum()
}

/// True when the test can load programs; false (after saying so) when the caller asked to skip
/// root-only tests. Panics with what to do otherwise, so that a forgotten `sudo` is not a pass.
fn may_load_kernel_programs() -> bool {
    if effective_uid() == Some(0) {
        return true;
    }
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("skipped: loading a kernel program needs root ({SKIP_VAR}=1 is set)");
        return false;
    }
    panic!(
        "this test loads a kernel program and needs root: run it as root \
         (e.g. `sudo -E cargo xtask test`), or set {SKIP_VAR}=1 to skip it"
    );
}

/// The effective user id, from /proc (the test crate has no libc of its own).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfilesystem"
    line.split_whitespace().nth(2)?.parse().ok()
}

/// A minimal Ethernet/IPv4/TCP SYN from 10.0.0.1:40000 to 10.0.0.2:80, checksums included so
/// that the packet would be valid on a wire.
fn ethernet_ipv4_tcp_packet() -> Vec<u8> {
    let mut packet = Vec::with_capacity(54);
    packet.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    packet.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // source MAC
    packet.extend_from_slice(&0x0800u16.to_be_bytes()); // EtherType IPv4

    let source = [10, 0, 0, 1];
    let destination = [10, 0, 0, 2];
    let mut ip = [
        0x45, 0x00, 0, 40, // version 4, IHL 5, total length 40
        0x12, 0x34, 0x40, 0x00, // id, don't fragment
        64, 6, 0, 0, // TTL, protocol TCP, checksum (below)
        0, 0, 0, 0, // source (below)
        0, 0, 0, 0, // destination (below)
    ];
    ip[12..16].copy_from_slice(&source);
    ip[16..20].copy_from_slice(&destination);
    let ip_checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());
    packet.extend_from_slice(&ip);

    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes()); // sequence number
    tcp[12] = 5 << 4; // data offset: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
    let mut pseudo = Vec::with_capacity(12 + tcp.len());
    pseudo.extend_from_slice(&source);
    pseudo.extend_from_slice(&destination);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let tcp_checksum = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&tcp_checksum.to_be_bytes());
    packet.extend_from_slice(&tcp);
    packet
}

/// RFC 1071 ones' complement sum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

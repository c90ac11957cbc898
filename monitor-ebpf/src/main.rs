//! redcap-monitor's kernel programs.
//!
//! For now one TC classifier that counts the packets it sees and always passes them on: it proves
//! the toolchain (nightly, build-std=core, bpf-linker, aya-build) end to end. The API-flow filter
//! lands with live capture. Programs here never drop or modify a packet.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_OK,
    macros::{classifier, map},
    maps::PerCpuArray,
    programs::TcContext,
};
use monitor_common::{KERNEL_COUNTER_SLOTS, KernelCounter};

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_COUNTER_SLOTS, 0);

#[classifier]
pub fn api_flow_classifier(_ctx: TcContext) -> i32 {
    count(KernelCounter::PacketsSeen);
    TC_ACT_OK
}

#[inline(always)]
fn count(counter: KernelCounter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only written by programs on this CPU, one at a time.
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Some helpers (e.g. bpf_probe_read_user) are GPL-only; the kernel checks this section.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

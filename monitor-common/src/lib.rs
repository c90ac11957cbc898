//! Types and constants that cross the kernel/user-space boundary.
//!
//! Everything here is `#[repr(C)]` and `no_std`: the kernel programs in `monitor-ebpf` write these
//! values and the daemon reads them. Nothing here parses or allocates.
#![no_std]

/// Indexes into the kernel's per-CPU counter array. User space sums them over CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCounter {
    /// Packets the classifier looked at.
    PacketsSeen = 0,
    /// Packets that belong to no tracked API flow and produced no event.
    Filtered = 1,
}

/// Number of slots in the counter array; grows as later probes add counters.
pub const KERNEL_COUNTER_SLOTS: u32 = 8;

/// Name of the per-CPU counter array in the kernel object.
pub const COUNTERS_MAP: &str = "COUNTERS";

//! uprobes on OpenSSL (`SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex`, `SSL_free`) in
//! the web server's libssl: the plaintext of HTTPS API connections, copied to the same ring
//! buffer as the TC classifier's segments, as [`TlsEvent`]s.
//!
//! A connection is (process, `SSL*`). Only reads by configured processes (by name) are looked
//! at, and only a connection whose plaintext may carry an API call (a `POST`, or the HTTP/2
//! preface: see `classify_client_start`) is tracked; every other
//! call costs a map lookup and a counter. Reads are copied on return (the data exists only
//! then), writes on return too, and only the bytes `SSL_write` says it took: a non-blocking
//! write that must be retried with the same buffer is then never copied twice. No struct
//! offsets of any OpenSSL version are used.

use aya_ebpf::{
    helpers::generated::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
        bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray},
    programs::{ProbeContext, RetProbeContext},
};
use monitor_common::{
    CLIENT_START_LEN, COMM_LEN, ClientStart, DEFAULT_MAX_TLS_CONNS, DEFAULT_TLS_IDLE_NS,
    DIRECTION_CLIENT_TO_SERVER, DIRECTION_SERVER_TO_CLIENT, FAMILY_TLS, KernelCounter,
    MAX_CHUNK_BYTES, MAX_CHUNKS_PER_SEGMENT, MAX_TLS_PROCESSES, MAX_TLS_USERS, NO_FD, NO_USER,
    TCP_FIN, TCP_SYN, TlsConnKey, TlsConnState, TlsEvent, classify_client_start, comm_matches,
    uid_allowed,
};

use crate::{count, output, verifier_bounded};

/// Process names whose reads are looked at, set by user space at load; all-zero = unused.
#[unsafe(no_mangle)]
static TLS_PROCESSES: [[u8; COMM_LEN]; MAX_TLS_PROCESSES] = [[0; COMM_LEN]; MAX_TLS_PROCESSES];

/// User ids a configured process must run as, set by user space at load; unused slots
/// `NO_USER`. A process name can be taken by anyone; a user id cannot.
#[unsafe(no_mangle)]
static TLS_USERS: [u32; MAX_TLS_USERS] = [NO_USER; MAX_TLS_USERS];

/// After this long without a call, a tracked connection's next read is judged afresh.
#[unsafe(no_mangle)]
static TLS_IDLE_NS: u64 = DEFAULT_TLS_IDLE_NS;

/// Tracked TLS connections; LRU so that a missed `SSL_free` cannot fill the table for good.
#[map(name = "TLS_CONNS")]
static TLS_CONNS: LruHashMap<TlsConnKey, TlsConnState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_TLS_CONNS, 0);

/// The arguments of an SSL call in progress, saved at entry for the return probe.
#[repr(C)]
#[derive(Clone, Copy)]
struct CallArgs {
    ssl: u64,
    buf: u64,
    /// `size_t *readbytes` / `size_t *written` of the `_ex` forms, else 0.
    len_ptr: u64,
    ktime_ns: u64,
}

/// Keyed by the thread (`bpf_get_current_pid_tgid`): a thread is in one SSL call at a time.
#[map(name = "TLS_READ_ARGS")]
static READ_ARGS: LruHashMap<u64, CallArgs> = LruHashMap::with_max_entries(16384, 0);

/// The socket each `SSL*` of a configured process was given with `SSL_set_fd` (nginx does;
/// Apache's mod_ssl uses its own BIOs and never calls it). Sent with the first event of a
/// tracked connection so that user space can find the client's address.
#[map(name = "TLS_FDS")]
static SSL_FDS: LruHashMap<TlsConnKey, u32> =
    LruHashMap::with_max_entries(DEFAULT_MAX_TLS_CONNS, 0);

#[map(name = "TLS_WRITE_ARGS")]
static WRITE_ARGS: LruHashMap<u64, CallArgs> = LruHashMap::with_max_entries(16384, 0);

/// Like the classifier's `EventBuffer`, but its own: a TC program may interrupt a uprobe on
/// the same CPU (softirq), and must not overwrite what the uprobe is assembling.
#[repr(C)]
struct TlsBuffer {
    header: TlsEvent,
    bytes: [u8; MAX_CHUNK_BYTES as usize],
}

#[map(name = "TLS_BUFFER")]
static TLS_BUFFER: PerCpuArray<TlsBuffer> = PerCpuArray::with_max_entries(1, 0);

#[uprobe]
pub fn ssl_read_entry(ctx: ProbeContext) -> u32 {
    save_read(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_entry(ctx: ProbeContext) -> u32 {
    save_read(&ctx, true);
    0
}

/// `int SSL_read(SSL *, void *buf, int num)`: the byte count, or ≤ 0.
#[uretprobe]
pub fn ssl_read_return(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    if let Some(args) = take(&READ_ARGS)
        && ret > 0
    {
        read_done(&args, ret as u64);
    }
    0
}

/// `int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes)`: 1 on success.
#[uretprobe]
pub fn ssl_read_ex_return(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    if let Some(args) = take(&READ_ARGS)
        && ret == 1
        && let Some(len) = user_size(args.len_ptr)
    {
        read_done(&args, len);
    }
    0
}

#[uprobe]
pub fn ssl_write_entry(ctx: ProbeContext) -> u32 {
    save_write(&ctx, false);
    0
}

#[uprobe]
pub fn ssl_write_ex_entry(ctx: ProbeContext) -> u32 {
    save_write(&ctx, true);
    0
}

/// `int SSL_write(SSL *, const void *buf, int num)`: the bytes taken, or ≤ 0 (retry later).
#[uretprobe]
pub fn ssl_write_return(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    if let Some(args) = take(&WRITE_ARGS)
        && ret > 0
    {
        write_done(&args, ret as u64);
    }
    0
}

/// `int SSL_write_ex(SSL *, const void *buf, size_t num, size_t *written)`: 1 on success.
#[uretprobe]
pub fn ssl_write_ex_return(ctx: RetProbeContext) -> u32 {
    let ret: i32 = ctx.ret();
    if let Some(args) = take(&WRITE_ARGS)
        && ret == 1
        && let Some(len) = user_size(args.len_ptr)
    {
        write_done(&args, len);
    }
    0
}

/// `int SSL_set_fd(SSL *, int fd)`: remembers the socket of a configured process's `SSL*`.
#[uprobe]
pub fn ssl_set_fd_entry(ctx: ProbeContext) -> u32 {
    let (Some(ssl), Some(fd)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    let Ok(comm) = current_comm() else {
        return 0;
    };
    let names: &[[u8; COMM_LEN]; MAX_TLS_PROCESSES] = core::hint::black_box(&TLS_PROCESSES);
    if comm_matches(&comm, names) && trusted_user() {
        let _ = SSL_FDS.insert(&conn_key(ssl), &(fd as u32), 0);
    }
    0
}

/// `void SSL_free(SSL *)`: a tracked connection ends; its pointer may be reused at once.
#[uprobe]
pub fn ssl_free_entry(ctx: ProbeContext) -> u32 {
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let key = conn_key(ssl);
    let _ = SSL_FDS.remove(&key);
    let Some(state) = (unsafe { TLS_CONNS.get(&key) }) else {
        return 0;
    };
    let state = *state;
    if let Some(buffer) = TLS_BUFFER.get_ptr_mut(0) {
        // SAFETY: per-CPU value; uprobe programs do not nest on one CPU.
        let buffer = unsafe { &mut *buffer };
        buffer.header = header(&key, &state, DIRECTION_CLIENT_TO_SERVER, now());
        buffer.header.stream_offset = state.read_bytes as u32;
        buffer.header.peer_offset = state.written_bytes as u32;
        buffer.header.flags = TCP_FIN;
        output(buffer, 0);
    }
    if TLS_CONNS.remove(&key).is_ok() {
        count(KernelCounter::TlsConnsEnded, 1);
    }
    0
}

fn save_read(ctx: &ProbeContext, ex: bool) {
    let Ok(comm) = current_comm() else {
        return;
    };
    // Opaque: the names are patched into .rodata at load, after compilation, so the compiler
    // must not fold them (a volatile copy of the whole table would not fit the BPF stack).
    let names: &[[u8; COMM_LEN]; MAX_TLS_PROCESSES] = core::hint::black_box(&TLS_PROCESSES);
    if !comm_matches(&comm, names) {
        count(KernelCounter::TlsOtherProcess, 1);
        return;
    }
    if !trusted_user() {
        count(KernelCounter::TlsOtherUser, 1);
        return;
    }
    save(ctx, ex, &READ_ARGS);
}

fn save_write(ctx: &ProbeContext, ex: bool) {
    // Only tracked connections are written out; they passed the process filter when they
    // started, so a lookup is all an untracked write costs.
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return;
    };
    if unsafe { TLS_CONNS.get(&conn_key(ssl)) }.is_none() {
        count(KernelCounter::TlsFiltered, 1);
        return;
    }
    save(ctx, ex, &WRITE_ARGS);
}

#[inline(always)]
fn save(ctx: &ProbeContext, ex: bool, table: &LruHashMap<u64, CallArgs>) {
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_ptr = if ex {
        match ctx.arg::<u64>(3) {
            Some(p) => p,
            None => return,
        }
    } else {
        0
    };
    let args = CallArgs {
        ssl,
        buf,
        len_ptr,
        ktime_ns: now(),
    };
    let thread = unsafe { bpf_get_current_pid_tgid() };
    if table.insert(&thread, &args, 0).is_err() {
        count(KernelCounter::TlsArgsLost, 1);
    }
}

/// The current thread's saved arguments, removed from the table.
#[inline(always)]
fn take(table: &LruHashMap<u64, CallArgs>) -> Option<CallArgs> {
    let thread = unsafe { bpf_get_current_pid_tgid() };
    let args = unsafe { table.get(&thread) }.copied()?;
    let _ = table.remove(&thread);
    Some(args)
}

fn read_done(args: &CallArgs, len: u64) {
    let key = conn_key(args.ssl);
    let now = now();
    let idle = unsafe { core::ptr::read_volatile(&TLS_IDLE_NS) };
    if let Some(state) = TLS_CONNS.get_ptr_mut(&key) {
        // SAFETY: the LRU value stays valid for this program run; one SSL* is used by one
        // thread at a time.
        let state = unsafe { &mut *state };
        if now.saturating_sub(state.last_ns) <= idle {
            let transfer = Transfer {
                buf: args.buf,
                len,
                direction: DIRECTION_CLIENT_TO_SERVER,
                ktime_ns: now,
                flags: 0,
            };
            send(&transfer, &key, state);
            state.read_bytes += len;
            state.last_ns = now;
            return;
        }
        // Idle for longer than the gap: the pointer may have been freed unseen and reused.
        // The read must earn tracking again, as a new connection.
        if TLS_CONNS.remove(&key).is_ok() {
            count(KernelCounter::TlsConnsEnded, 1);
        }
    }
    match client_start(args.buf, len) {
        ClientStart::Track => {}
        start => {
            if start == ClientStart::Http2Unseen {
                count(KernelCounter::Http2Unseen, 1);
            }
            count(KernelCounter::TlsFiltered, 1);
            return;
        }
    }
    let mut state = TlsConnState {
        since_ns: now,
        last_ns: now,
        read_bytes: 0,
        written_bytes: 0,
    };
    let transfer = Transfer {
        buf: args.buf,
        len,
        direction: DIRECTION_CLIENT_TO_SERVER,
        ktime_ns: now,
        flags: TCP_SYN,
    };
    send(&transfer, &key, &state);
    state.read_bytes = len;
    if TLS_CONNS.insert(&key, &state, 0).is_ok() {
        count(KernelCounter::TlsConnsStarted, 1);
    } else {
        count(KernelCounter::FlowInsertFailed, 1);
    }
}

fn write_done(args: &CallArgs, len: u64) {
    let key = conn_key(args.ssl);
    // Freed (or evicted) while the write was in progress: nothing to attach it to.
    let Some(state) = TLS_CONNS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: as in read_done.
    let state = unsafe { &mut *state };
    let transfer = Transfer {
        buf: args.buf,
        len,
        direction: DIRECTION_SERVER_TO_CLIENT,
        ktime_ns: args.ktime_ns,
        flags: 0,
    };
    send(&transfer, &key, state);
    state.written_bytes += len;
    state.last_ns = now();
}

/// Judges an untracked connection's read by its first bytes and whether it ends exactly at the
/// end of a request head, as the TC program judges a segment.
fn client_start(buf: u64, len: u64) -> ClientStart {
    let Some(buffer) = TLS_BUFFER.get_ptr_mut(0) else {
        return ClientStart::Other;
    };
    // SAFETY: per-CPU value; uprobe programs do not nest on one CPU.
    let bytes = unsafe { &mut (*buffer).bytes };
    let mut tail = [0u8; 4];
    let ends_with_blank_line = len >= 4
        && unsafe {
            bpf_probe_read_user(tail.as_mut_ptr().cast(), 4, (buf + len - 4) as *const _) == 0
        }
        && tail == *b"\r\n\r\n";
    let head_len = if len < CLIENT_START_LEN as u64 {
        len as u32
    } else {
        CLIENT_START_LEN as u32
    };
    if !read_user(buf, head_len, bytes) {
        return ClientStart::Other;
    }
    classify_client_start(bytes, head_len as usize, len as usize, ends_with_blank_line)
}

/// Copies `len` (1..=MAX_CHUNK_BYTES) bytes of user memory at `src` into `bytes`.
#[inline(always)]
fn read_user(src: u64, len: u32, bytes: &mut [u8; MAX_CHUNK_BYTES as usize]) -> bool {
    if len == 0 || len > MAX_CHUNK_BYTES {
        return false;
    }
    let len = verifier_bounded(len);
    let ret = unsafe { bpf_probe_read_user(bytes.as_mut_ptr().cast(), len, src as *const _) };
    ret == 0
}

/// What one SSL call moved: `len` bytes at `buf` in the web server's memory.
#[derive(Clone, Copy)]
struct Transfer {
    buf: u64,
    len: u64,
    direction: u8,
    ktime_ns: u64,
    /// [`TCP_SYN`] when the call starts tracking.
    flags: u8,
}

/// Sends the call's bytes as events of at most `MAX_CHUNK_BYTES` (up to
/// `MAX_CHUNKS_PER_SEGMENT` of them: 256 KiB per call); bytes past that, or lost to a full ring,
/// are counted as truncated and show up in user space as a gap.
///
/// The chunk size is fixed (unlike the classifier's `CHUNK_BYTES`) so that each chunk's offset
/// is a constant for the verifier: with a variable one, it explores every combination of chunk
/// lengths and gives up at a million instructions.
fn send(transfer: &Transfer, key: &TlsConnKey, state: &TlsConnState) {
    let Transfer {
        buf,
        len,
        direction,
        ktime_ns,
        flags,
    } = *transfer;
    let Some(buffer) = TLS_BUFFER.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; uprobe programs do not nest on one CPU.
    let buffer = unsafe { &mut *buffer };
    let base = if direction == DIRECTION_CLIENT_TO_SERVER {
        state.read_bytes
    } else {
        state.written_bytes
    };
    buffer.header = header(key, state, direction, ktime_ns);
    let total = if len > u64::from(u32::MAX) {
        u32::MAX
    } else {
        len as u32
    };
    buffer.header.call_len = total;
    buffer.header.flags = flags;
    if flags & TCP_SYN != 0
        && let Some(fd) = unsafe { SSL_FDS.get(key) }
    {
        buffer.header.fd = *fd;
    }
    let mut sent: u32 = 0;
    let mut i: u32 = 0;
    while i < MAX_CHUNKS_PER_SEGMENT {
        let offset = i * MAX_CHUNK_BYTES;
        if offset >= total {
            break;
        }
        let left = total - offset;
        let n = if left < MAX_CHUNK_BYTES {
            left
        } else {
            MAX_CHUNK_BYTES
        };
        if !read_user(buf.wrapping_add(u64::from(offset)), n, &mut buffer.bytes) {
            break;
        }
        buffer.header.stream_offset = base.wrapping_add(u64::from(offset)) as u32;
        buffer.header.offset = offset;
        buffer.header.copied = n;
        if !output(buffer, n) {
            break;
        }
        // Only the first event of a connection carries SYN (and the socket).
        buffer.header.flags = 0;
        buffer.header.fd = NO_FD;
        sent = offset + n;
        i += 1;
    }
    if sent < total {
        count(KernelCounter::TruncatedBytes, u64::from(total - sent));
    }
}

#[inline(always)]
fn header(key: &TlsConnKey, state: &TlsConnState, direction: u8, ktime_ns: u64) -> TlsEvent {
    TlsEvent {
        ktime_ns,
        stream_offset: 0,
        peer_offset: 0,
        call_len: 0,
        offset: 0,
        copied: 0,
        fd: NO_FD,
        ssl: key.ssl,
        tgid: key.tgid,
        _pad1: 0,
        conn_since_ns: state.since_ns,
        _pad2: 0,
        family: FAMILY_TLS,
        direction,
        flags: 0,
        _reserved: [0; 5],
    }
}

/// A `size_t` in the web server's memory (`*readbytes`, `*written`).
#[inline(always)]
fn user_size(ptr: u64) -> Option<u64> {
    if ptr == 0 {
        return None;
    }
    let mut value: u64 = 0;
    let ret =
        unsafe { bpf_probe_read_user(core::ptr::from_mut(&mut value).cast(), 8, ptr as *const _) };
    (ret == 0).then_some(value)
}

#[inline(always)]
fn conn_key(ssl: u64) -> TlsConnKey {
    TlsConnKey {
        ssl,
        tgid: (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32,
        _pad: 0,
    }
}

#[inline(always)]
/// Whether the current process runs as one of the configured users (its real uid).
fn trusted_user() -> bool {
    let uid = unsafe { bpf_get_current_uid_gid() } as u32;
    // Opaque for the same reason as the process names: patched into .rodata at load.
    let users: &[u32; MAX_TLS_USERS] = core::hint::black_box(&TLS_USERS);
    uid_allowed(uid, users)
}

fn current_comm() -> Result<[u8; COMM_LEN], i64> {
    let mut comm = [0u8; COMM_LEN];
    let ret = unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
    if ret == 0 { Ok(comm) } else { Err(ret) }
}

#[inline(always)]
fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

//! `restrict-families AF_UNIX,AF_INET,... -- PROGRAM ARGS...`: runs PROGRAM with `socket()`
//! refused (`EAFNOSUPPORT`) for every address family not listed, as systemd's
//! `RestrictAddressFamilies=` does it: a seccomp filter installed just before the exec, inherited
//! by every process PROGRAM starts. The tests put it in the chain that runs the daemon the way
//! the unit does (`monitor_tests::unit`), so that a socket the unit forbids fails in the tests
//! as it would under systemd.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

fn family(name: &str) -> u32 {
    let family = match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        other => {
            eprintln!("restrict-families: unknown address family {other}");
            std::process::exit(2)
        }
    };
    family as u32
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_if_equal(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// socket(family, ...) with a family outside `allowed` returns EAFNOSUPPORT; all else runs.
fn filter(allowed: &[u32]) -> Vec<libc::sock_filter> {
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let allow = statement(ret, libc::SECCOMP_RET_ALLOW);
    let refuse = statement(
        ret,
        libc::SECCOMP_RET_ERRNO | (libc::EAFNOSUPPORT as u32 & libc::SECCOMP_RET_DATA),
    );
    // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half on little-endian).
    let mut program = vec![
        statement(load, 4),
        jump_if_equal(AUDIT_ARCH, 1, 0),
        allow,
        statement(load, 0),
        jump_if_equal(libc::SYS_socket as u32, 1, 0),
        allow,
        statement(load, 16),
    ];
    let n = allowed.len();
    for (i, family) in allowed.iter().enumerate() {
        // On a match, jump past the remaining checks and the refusal to the final allow.
        program.push(jump_if_equal(*family, (n - i) as u8, 0));
    }
    program.push(refuse);
    program.push(allow);
    program
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (Some(families), Some(program)) = (args.first(), args.get(2)) else {
        eprintln!("usage: restrict-families AF_UNIX,AF_INET,... -- PROGRAM ARGS...");
        std::process::exit(2)
    };
    let allowed: Vec<u32> = families.to_string_lossy().split(',').map(family).collect();
    let program_filter = filter(&allowed);
    let fprog = libc::sock_fprog {
        len: program_filter.len() as u16,
        filter: program_filter.as_ptr() as *mut libc::sock_filter,
    };
    // Without no_new_privs only a process holding CAP_SYS_ADMIN may install a filter: the tests
    // run this as root, before setpriv drops to the service user.
    let installed = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if installed != 0 {
        eprintln!(
            "restrict-families: cannot install the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1)
    }
    let err = std::process::Command::new(program).args(&args[3..]).exec();
    eprintln!(
        "restrict-families: cannot run {}: {err}",
        program.to_string_lossy()
    );
    std::process::exit(127)
}

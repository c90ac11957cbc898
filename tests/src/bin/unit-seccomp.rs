//! `unit-seccomp --families AF_UNIX,AF_INET --allow 0,1,2,... --unknown 451,452 -- PROGRAM ARGS`:
//! runs PROGRAM under the seccomp filter systemd would install for the unit's
//! `SystemCallFilter=`, `SystemCallErrorNumber=EPERM`, `SystemCallArchitectures=native` and
//! `RestrictAddressFamilies=`: a system call not in `--allow` fails with EPERM, one systemd does
//! not know (`--unknown`, newer than its tables) with ENOSYS as systemd answers those, a
//! `socket()` of a family not in `--families` with EAFNOSUPPORT, and any call of a foreign
//! architecture with EPERM. `monitor_tests::unit` works out the lists from the unit file and
//! systemd's own syscall groups, and puts this program just before the daemon (after setpriv,
//! whose `--no-new-privs` lets an unprivileged process install the filter), as systemd installs
//! it just before the exec. Every process PROGRAM starts inherits the filter.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn family(name: &str) -> u32 {
    let family = match name {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        "AF_PACKET" => libc::AF_PACKET,
        other => fail(&format!("unknown address family {other}")),
    };
    family as u32
}

fn fail(why: &str) -> ! {
    eprintln!("unit-seccomp: {why}");
    std::process::exit(2)
}

fn statement(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
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

fn errno(value: i32) -> libc::sock_filter {
    statement(
        libc::BPF_RET | libc::BPF_K,
        libc::SECCOMP_RET_ERRNO | (value as u32 & libc::SECCOMP_RET_DATA),
    )
}

struct Rules {
    families: Vec<u32>,
    allowed: Vec<u32>,
    unknown: Vec<u32>,
}

fn filter(rules: &Rules) -> Vec<libc::sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let allow = statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW);
    // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low half on little-endian).
    let mut program = vec![
        statement(load, 4),
        jump_if_equal(AUDIT_ARCH, 1, 0),
        errno(libc::EPERM),
        statement(load, 0),
    ];
    // socket(): the family first; an allowed one goes on to the allow list below.
    let families = rules.families.len();
    program.push(jump_if_equal(
        libc::SYS_socket as u32,
        0,
        (families + 2) as u8,
    ));
    program.push(statement(load, 16));
    for (i, family) in rules.families.iter().enumerate() {
        program.push(jump_if_equal(*family, (families - i) as u8, 0));
    }
    program.push(errno(libc::EAFNOSUPPORT));
    program.push(statement(load, 0));
    for nr in &rules.allowed {
        program.push(jump_if_equal(*nr, 0, 1));
        program.push(allow);
    }
    for nr in &rules.unknown {
        program.push(jump_if_equal(*nr, 0, 1));
        program.push(errno(libc::ENOSYS));
    }
    program.push(errno(libc::EPERM));
    program
}

fn numbers(list: &OsString) -> Vec<u32> {
    list.to_string_lossy()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| fail(&format!("{n}: not a number")))
        })
        .collect()
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut rules = Rules {
        families: Vec::new(),
        allowed: Vec::new(),
        unknown: Vec::new(),
    };
    let mut at = 0;
    while at + 1 < args.len() && args[at] != "--" {
        let value = &args[at + 1];
        match args[at].to_str() {
            Some("--families") => {
                rules.families = value.to_string_lossy().split(',').map(family).collect()
            }
            Some("--allow") => rules.allowed = numbers(value),
            Some("--unknown") => rules.unknown = numbers(value),
            _ => fail(
                "usage: unit-seccomp --families F,... --allow N,... --unknown N,... -- PROGRAM ARGS",
            ),
        }
        at += 2;
    }
    let Some(program) = args
        .get(at + 1)
        .filter(|_| args.get(at).is_some_and(|a| a == "--"))
    else {
        fail("no `-- PROGRAM` after the lists")
    };
    if rules.allowed.is_empty() {
        fail("--allow is empty: nothing could run");
    }
    let instructions = filter(&rules);
    let fprog = libc::sock_fprog {
        len: u16::try_from(instructions.len()).unwrap_or_else(|_| fail("filter too long")),
        filter: instructions.as_ptr() as *mut libc::sock_filter,
    };
    // An unprivileged process may install a filter only under no_new_privs (setpriv set it, as
    // the unit's NoNewPrivileges= does); setting it again is harmless.
    let installed = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &fprog as *const libc::sock_fprog,
            ) == 0
    };
    if !installed {
        fail(&format!(
            "cannot install the seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    let err = std::process::Command::new(program)
        .args(&args[at + 2..])
        .exec();
    eprintln!(
        "unit-seccomp: cannot run {}: {err}",
        program.to_string_lossy()
    );
    std::process::exit(127)
}

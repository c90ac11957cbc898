//! `cargo xtask setup`: installs what building and testing need, in dependency order, skipping
//! whatever is present and saying so in one line per step. Idempotent, and fast when nothing is
//! missing (no `apt-get update` then). Never removes or upgrades anything.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use crate::{
    Failure, Result,
    process::{self, describe},
};

/// Debian packages and why each is needed. The LLVM 22 group must be installed before
/// bpf-linker is built against it.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker is built against LLVM 22"),
    ("libpolly-22-dev", "LLVM 22's static libraries link Polly"),
    ("libzstd-dev", "LLVM 22 links zstd"),
    ("zlib1g-dev", "LLVM 22 links zlib"),
    (
        "libpcap-dev",
        "pcap headers and libraries for capture tooling",
    ),
    (
        "tshark",
        "cross-checks captures in tests; the baseline of the offline bench",
    ),
    (
        "tcpdump",
        "records loopback traffic for the demo and end-to-end tests",
    ),
    (
        "logrotate",
        "rotates the record files with the logrotate file the package ships (the .deb test)",
    ),
    (
        "curl",
        "one of the real API clients in the end-to-end tests",
    ),
    (
        "iproute2",
        "`ip` for network namespaces and veth pairs in tests",
    ),
    (
        "nginx",
        "the web server in front of the simulator in live tests",
    ),
    ("wrk", "load generator for the live-overhead bench"),
    (
        "strace",
        "shows that the daemon opens no socket the unit forbids (service test)",
    ),
    (
        "linux-libc-dev",
        "system call numbers for the tests' copy of the unit's seccomp filter (unit-seccomp)",
    ),
    (
        "prometheus",
        "promtool checks the alert rules and metric names; a real Prometheus scrapes the daemon in the telemetry test",
    ),
    (
        "openssl",
        "the test CA and server certificate of the HTTPS capture tests",
    ),
    (
        "apache2",
        "Apache with mod_ssl: a web server whose OpenSSL the HTTPS capture tests watch",
    ),
    (
        "libapache2-mod-php",
        "PHP under Apache, the REDCap-like API script of the HTTPS capture tests",
    ),
    (
        "php-fpm",
        "PHP FastCGI behind nginx: the adversarial suite's second REDCap-like API server",
    ),
    (
        "php-cli",
        "runs the REDCap External Module's PHP tests (redcap-module/tests/)",
    ),
    (
        "mariadb-server",
        "a real MariaDB (started by the tests on a private socket) for the token directory's tests",
    ),
    (
        "redis-server",
        "a real Redis (started by the tests on a private port or socket) for the shared state across web hosts",
    ),
    (
        "systemd",
        "systemd-analyze verifies the unit; systemd-sysusers creates the package's user",
    ),
    (
        "chromium",
        "headless Chromium opens the HTML reports in tests (console messages, screenshot of the charts)",
    ),
    (
        "dpkg-dev",
        "dpkg-shlibdeps: the .deb's library dependencies (cargo xtask dist)",
    ),
];

/// Without this answer tshark's install stops to ask whether non-root users may capture.
const WIRESHARK_DEBCONF: &str = "wireshark-common wireshark-common/install-setuid boolean false\n";

/// The LLVM that bpf-linker must link: the one nightly rustc emits bitcode for.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_FEATURE: &str = "llvm-22";
/// Pinned so that a fresh machine builds the same linker as a developer's.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Pinned so that every machine fuzzes with the same libFuzzer driver.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Pinned: 3.8.0 builds on rustc 1.95 (MSRV 1.85) and is what the package metadata was written for.
const CARGO_DEB_VERSION: &str = "3.8.0";

const PYCAP_MODULE: &str = "redcap";
const PYCAP_PACKAGE: &str = "pycap";
/// The `http2` extra pulls in the `h2` module.
const HTTPX_HTTP2_PACKAGE: &str = "httpx[http2]";

/// Runs every step in order: packages (LLVM first), nightly, rust-src, bpf-linker, cargo-deb,
/// cargo-fuzz, PyCap, httpx with HTTP/2.
pub(crate) fn run() -> Result<()> {
    debian_packages()?;
    nightly_toolchain()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    cargo_fuzz()?;
    pycap()?;
    httpx_http2()?;
    Ok(())
}

fn say(line: &str) {
    println!("setup: {line}");
}

fn debian_packages() -> Result<()> {
    let names: Vec<&str> = DEBIAN_PACKAGES.iter().map(|(name, _)| *name).collect();
    let Some(missing) = missing_debian_packages(&names)? else {
        say(&format!(
            "checking Debian packages... dpkg-query not found (not Debian/Ubuntu?): \
             make sure the equivalents of {} are installed",
            names.join(" ")
        ));
        return Ok(());
    };
    if missing.is_empty() {
        say(&format!(
            "checking Debian packages... all {} present ({})",
            names.len(),
            names.join(" ")
        ));
        return Ok(());
    }
    say(&format!(
        "checking Debian packages... missing: {}",
        missing.join(" ")
    ));
    let privilege = Privilege::detect().ok_or_else(|| {
        Failure::new(format!(
            "the Debian packages {list} are missing and installing them needs root \
             (no sudo here). Run as root:\n    \
             echo '{seed}' | debconf-set-selections\n    \
             apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y \
             --no-install-recommends {list}\nthen run `cargo xtask setup` again.",
            list = missing.join(" "),
            seed = WIRESHARK_DEBCONF.trim_end(),
        ))
    })?;
    for (name, why) in DEBIAN_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        say(&format!("installing Debian package {name} ({why})"));
    }
    install_debian_packages(&privilege, &missing)?;
    let still_missing = missing_debian_packages(&missing)?.unwrap_or_default();
    if !still_missing.is_empty() {
        return Err(Failure::new(format!(
            "apt-get finished but these are still not installed: {list}. Check that they are \
             known with `apt-cache policy {list}` (llvm-22-dev comes from bookworm-security on \
             Debian 12) and try `apt-get install -y {list}` by hand.",
            list = still_missing.join(" ")
        )));
    }
    Ok(())
}

/// The packages among `names` that dpkg does not list as installed; `None` without dpkg.
fn missing_debian_packages<'a>(names: &[&'a str]) -> Result<Option<Vec<&'a str>>> {
    if process::find_on_path("dpkg-query").is_none() {
        return Ok(None);
    }
    // One call for all packages; dpkg-query exits 1 if some are unknown but still lists the rest.
    let output = process::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package}\t${Status}\n"])
            .args(names),
    )?;
    let listing = String::from_utf8_lossy(&output.stdout);
    let installed = |name: &str| {
        listing.lines().any(|line| {
            let (package, status) = line.split_once('\t').unwrap_or((line, ""));
            // Multi-arch packages may print as `name:arch`.
            let package = package.split(':').next().unwrap_or(package);
            package == name && status == "install ok installed"
        })
    };
    Ok(Some(
        names
            .iter()
            .copied()
            .filter(|name| !installed(name))
            .collect(),
    ))
}

/// How to run apt-get: directly as root, or through sudo.
enum Privilege {
    Root,
    Sudo,
}

impl Privilege {
    fn detect() -> Option<Self> {
        if process::is_root() {
            Some(Privilege::Root)
        } else if process::find_on_path("sudo").is_some() {
            Some(Privilege::Sudo)
        } else {
            None
        }
    }

    /// `program args` with DEBIAN_FRONTEND=noninteractive, as root.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        match self {
            Privilege::Root => {
                let mut command = Command::new(program);
                command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
                command
            }
            Privilege::Sudo => {
                let mut command = Command::new("sudo");
                command
                    .args(["env", "DEBIAN_FRONTEND=noninteractive", program])
                    .args(args);
                command
            }
        }
    }
}

/// Waits for another apt (e.g. unattended-upgrades on a fresh machine) instead of failing.
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=600";

fn install_debian_packages(privilege: &Privilege, missing: &[&str]) -> Result<()> {
    if missing.contains(&"tshark") {
        preseed_wireshark(privilege)?;
    }
    say("running apt-get update (package lists, once)");
    process::run(&mut privilege.command("apt-get", &["-o", APT_LOCK_WAIT, "-q", "update"]))
        .map_err(|failure| {
            failure.hint(
                "The package lists could not be refreshed: check the network and \
                 /etc/apt/sources.list*, then run `apt-get update` to see the error.",
            )
        })?;
    let mut args = vec![
        "-o",
        APT_LOCK_WAIT,
        "-q",
        "install",
        "-y",
        "--no-install-recommends",
    ];
    args.extend_from_slice(missing);
    process::run(&mut privilege.command("apt-get", &args)).map_err(|failure| {
        failure.hint(format!(
            "Installing {list} failed; apt-get's message above names the package. \
             Try `apt-cache policy <package>` and \
             `DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list}`.",
            list = missing.join(" ")
        ))
    })
}

fn preseed_wireshark(privilege: &Privilege) -> Result<()> {
    say("pre-seeding debconf: tshark installs without asking about non-root capture");
    let mut command = privilege.command("debconf-set-selections", &[]);
    let mut child = command
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|err| Failure::new(format!("cannot start `{}`: {err}", describe(&command))))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(WIRESHARK_DEBCONF.as_bytes())
            .map_err(|err| Failure::new(format!("cannot feed debconf-set-selections: {err}")))?;
    }
    let status = child
        .wait()
        .map_err(|err| Failure::new(format!("debconf-set-selections: {err}")))?;
    if !status.success() {
        return Err(Failure::new(format!(
            "`{}` failed ({status}); tshark's install may stop to ask a question",
            describe(&command)
        )));
    }
    Ok(())
}

fn nightly_toolchain() -> Result<()> {
    let listing = rustup(&["toolchain", "list"])?;
    if listing.lines().any(|line| line.starts_with("nightly")) {
        say("checking Rust nightly toolchain... present");
        return Ok(());
    }
    say("installing Rust nightly toolchain (the kernel programs build with -Z build-std)");
    process::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))
}

fn rust_src() -> Result<()> {
    let installed = rustup(&["component", "list", "--toolchain", "nightly", "--installed"])?;
    if installed.lines().any(|line| line.trim() == "rust-src") {
        say("checking rust-src for nightly... present");
        return Ok(());
    }
    say("installing rust-src for nightly (build-std=core compiles core for the BPF target)");
    process::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// Output of a rustup query; rustup itself is a precondition (it installed this cargo).
fn rustup(args: &[&str]) -> Result<String> {
    let output = process::output(Command::new("rustup").args(args)).map_err(|_| {
        Failure::new(
            "rustup not found: the eBPF build needs a rustup-managed nightly. Install rustup \
             from https://rustup.rs (or your distribution's rustup package) and rerun.",
        )
    })?;
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`rustup {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn bpf_linker() -> Result<()> {
    if let Some(path) = process::find_on_path("bpf-linker") {
        if process::succeeds(Command::new(&path).arg("--version")) {
            say(&format!(
                "checking bpf-linker... present ({})",
                path.display()
            ));
            return Ok(());
        }
        say(&format!(
            "reinstalling bpf-linker ({} does not run; it links the kernel programs)",
            path.display()
        ));
    } else {
        say(&format!(
            "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (links the kernel \
             programs; a few minutes)"
        ));
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        return Err(Failure::new(format!(
            "bpf-linker needs LLVM 22 in {LLVM_PREFIX} (llvm-22-dev, libpolly-22-dev); \
             install them first (as root: `apt-get install -y llvm-22-dev libpolly-22-dev \
             libzstd-dev zlib1g-dev`)"
        )));
    }
    let mut install = process::cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", BPF_LINKER_FEATURE]);
    process::run(&mut install).map_err(|failure| {
        failure.hint(format!(
            "bpf-linker did not build. It needs a C toolchain (build-essential) and the \
             LLVM 22 development packages; retry by hand with\n    \
             LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features {BPF_LINKER_FEATURE}"
        ))
    })?;
    if process::find_on_path("bpf-linker").is_none() {
        return Err(Failure::new(
            "bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH",
        ));
    }
    Ok(())
}

/// cargo-deb at the pinned version (`cargo xtask dist` builds the .deb with it).
fn cargo_deb() -> Result<()> {
    let version = process::output(Command::new("cargo-deb").arg("--version"))
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let wanted = format!("cargo-deb {CARGO_DEB_VERSION}");
    match version {
        Some(found) if found == wanted => {
            say(&format!("checking {wanted}... present"));
            return Ok(());
        }
        Some(found) => say(&format!(
            "installing {wanted} (found {found}; the package metadata is written for {CARGO_DEB_VERSION})"
        )),
        None => say(&format!(
            "installing {wanted} (builds the .deb for `cargo xtask dist`; a few minutes)"
        )),
    }
    let mut install = process::cargo();
    install.args([
        "install",
        "cargo-deb",
        "--locked",
        "--version",
        CARGO_DEB_VERSION,
    ]);
    process::run(&mut install).map_err(|failure| {
        failure.hint(format!(
            "cargo-deb did not build; retry by hand with \
             `cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}` to see why"
        ))
    })
}

/// cargo-fuzz at the pinned version (`cargo xtask fuzz`, and the short runs of `cargo xtask test`).
fn cargo_fuzz() -> Result<()> {
    let version = process::output(Command::new("cargo-fuzz").arg("--version"))
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    match version {
        Some(found) if found == wanted => {
            say(&format!("checking {wanted}... present"));
            return Ok(());
        }
        Some(found) => say(&format!("installing {wanted} (found {found})")),
        None => say(&format!(
            "installing {wanted} (runs the fuzz targets of fuzz/ with nightly; a few minutes)"
        )),
    }
    let mut install = process::cargo();
    install.args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]);
    process::run(&mut install).map_err(|failure| {
        failure.hint(format!(
            "cargo-fuzz did not build; retry by hand with \
             `cargo install cargo-fuzz --locked --version {CARGO_FUZZ_VERSION}` to see why"
        ))
    })
}

fn pycap() -> Result<()> {
    python_package(
        &format!("import {PYCAP_MODULE}"),
        PYCAP_PACKAGE,
        &format!(
            "PyCap (Python module {PYCAP_MODULE}: the real REDCap client in the end-to-end tests \
             and the demo)"
        ),
    )
}

/// httpx with its HTTP/2 extra (the `h2` module): the HTTP/2 client in `tests/tests/h2.rs`.
fn httpx_http2() -> Result<()> {
    python_package(
        "import httpx, h2",
        HTTPX_HTTP2_PACKAGE,
        "httpx with HTTP/2 (Python modules httpx and h2: the HTTP/2 client of the end-to-end tests)",
    )
}

/// Installs `package` with pip unless `import` already succeeds; idempotent.
fn python_package(import: &str, package: &str, what: &str) -> Result<()> {
    if process::find_on_path("python3").is_none() {
        return Err(Failure::new(
            "python3 not found: the end-to-end tests run the REDCap simulator and the PyCap \
             client with it. Install it (as root: `apt-get install -y python3 python3-pip`).",
        ));
    }
    if process::succeeds(Command::new("python3").args(["-c", import])) {
        say(&format!("checking {what}... present"));
        return Ok(());
    }
    say(&format!("installing {what} with pip"));
    let pip = |extra: &[&str]| {
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(extra)
            .arg(package);
        command
    };
    let mut first = pip(&[]);
    let output = process::output(&mut first)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("externally-managed-environment") {
            // Debian's own python3 refuses pip installs (PEP 668); pyenv or a venv does not.
            say(
                "retrying pip with --break-system-packages (Debian's python3 is externally managed)",
            );
            process::run(&mut pip(&["--break-system-packages"]))?;
        } else if stderr.contains("No module named pip") {
            return Err(Failure::new(
                "python3 has no pip: install it (as root: `apt-get install -y python3-pip`, or \
                 `python3 -m ensurepip`) and rerun",
            ));
        } else {
            return Err(Failure::new(format!(
                "`{}` failed:\n{}\nTry it by hand to see why.",
                describe(&first),
                stderr.trim()
            )));
        }
    }
    if !process::succeeds(Command::new("python3").args(["-c", import])) {
        return Err(Failure::new(format!(
            "pip installed {package} but `python3 -c '{import}'` still fails: is `python3` \
             the interpreter pip installed into? (`python3 -m pip show {package}`)"
        )));
    }
    Ok(())
}

//! Builds the kernel programs in `monitor-ebpf` with nightly, `build-std=core` and bpf-linker
//! (through aya-build) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs that toolchain; without it this script says what is missing.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitor-ebpf");
    let root = root.to_str().expect("the checkout path is UTF-8");
    let package = aya_build::Package {
        name: "monitor-ebpf",
        root_dir: root,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default()).map_err(|err| {
        anyhow::anyhow!(
            "building the kernel programs failed: {err:#}\n\
             The eBPF toolchain (nightly with rust-src, bpf-linker for LLVM 22) may be missing: \
             run `cargo xtask setup`."
        )
    })
}

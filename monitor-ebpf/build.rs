//! Rebuild the kernel programs when bpf-linker changes, as aya-template does: cargo does not track
//! the linker otherwise.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

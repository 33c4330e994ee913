//! Builds the kernel programs (crate `xlb-xdp`) for bpfel-unknown-none with Debian's rustc-web,
//! registered by `scripts/setup.sh` as the rustup toolchain `xlb-bpf`, and leaves the object in
//! OUT_DIR for `include_bytes_aligned!`.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // Library-only builds (e.g. unit tests of pure modules) skip the kernel build; the
        // loader then reports at run time that this binary carries no programs.
        let object = out.join("xlb-xdp");
        if !object.exists() {
            fs::write(&object, b"")?;
        }
        return Ok(());
    }
    // rustc-web is a stable compiler; -Z build-std=core needs RUSTC_BOOTSTRAP, which aya-build
    // honours by adding build-std when it sees RUSTC_BOOTSTRAP=1 in its own environment.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = env::var("CARGO_MANIFEST_DIR")?;
    let xdp_dir = PathBuf::from(root).join("../xdp");
    let xdp_dir = xdp_dir.to_str().context("non-UTF-8 path")?;
    let features: &[&str] = if env::var_os("CARGO_FEATURE_LAYOUT_NEXT").is_some() {
        &["layout-next"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [Package {
            name: "xlb-xdp",
            root_dir: xdp_dir,
            features,
            ..Default::default()
        }],
        Toolchain::Custom("xlb-bpf"),
    )
    .context("building the kernel programs (run scripts/setup.sh first)")?;
    Ok(())
}

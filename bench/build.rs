//! Builds the benchmark's kernel programs (crate `xlb-xdp-bench`) for bpfel-unknown-none with
//! Debian's rustc-web, registered by `scripts/setup.sh` as the rustup toolchain `xlb-bpf`, and
//! leaves the objects in OUT_DIR for `include_bytes_aligned!` (see `src/bpf.rs`).
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The binary targets of `xlb-xdp-bench`, one object each.
const OBJECTS: [&str; 6] = [
    "xlb-floor",
    "xlb-gen",
    "xlb-sink",
    "xlb-fwd",
    "xlb-restore",
    "xlb-pass",
];

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        // Library-only builds (e.g. unit tests of pure modules) skip the kernel build; loading
        // a program then reports at run time that this binary carries none.
        for name in OBJECTS {
            let object = out.join(name);
            if !object.exists() {
                fs::write(&object, b"")?;
            }
        }
        return Ok(());
    }
    // rustc-web is a stable compiler; -Z build-std=core needs RUSTC_BOOTSTRAP, which aya-build
    // honours by adding build-std when it sees RUSTC_BOOTSTRAP=1 in its own environment.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let root = env::var("CARGO_MANIFEST_DIR")?;
    let dir = PathBuf::from(root).join("../xdp-bench");
    let dir = dir.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf(
        [Package {
            name: "xlb-xdp-bench",
            root_dir: dir,
            ..Default::default()
        }],
        Toolchain::Custom("xlb-bpf"),
    )
    .context("building the benchmark programs (run scripts/setup.sh first)")?;
    Ok(())
}

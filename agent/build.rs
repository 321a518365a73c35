//! Builds the eBPF programs (`redirect/ebpf`) for the BPF target, as aya-template does; the
//! agent embeds the objects with `aya::include_bytes_aligned!`.
//!
//! The programs are compiled by the toolchain that builds the agent (not a floating `nightly`):
//! `bpf-linker` reads rustc's LLVM bitcode and is built against one LLVM major (22 here, see
//! shared/TOOLCHAIN.md), and the project's pinned stable toolchain is the one whose LLVM is known.
//! `-Z build-std=core` on a stable toolchain needs `RUSTC_BOOTSTRAP=1` and its `rust-src`.
//! `TRUEIP_EBPF_TOOLCHAIN` names another toolchain (e.g. a nightly with a matching LLVM).

use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TRUEIP_EBPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest_dir.join("../redirect/ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("eBPF crate not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .context("the eBPF crate's path is not UTF-8")?;

    let toolchain_name = env::var("TRUEIP_EBPF_TOOLCHAIN")
        .or_else(|_| env::var("RUSTUP_TOOLCHAIN"))
        .ok();
    let toolchain = toolchain_name
        .as_deref()
        .map_or(Toolchain::Nightly, Toolchain::Custom);
    if env::var_os("RUSTC_BOOTSTRAP").is_none() {
        #[expect(
            clippy::disallowed_methods,
            reason = "aya-build passes this process's environment to the nested cargo; \
                      there is no other way to enable -Z build-std on a stable toolchain"
        )]
        // SAFETY: a build script is single-threaded here: no other thread reads the environment.
        unsafe {
            env::set_var("RUSTC_BOOTSTRAP", "1");
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "trueip-redirect-ebpf",
            root_dir,
            ..Package::default()
        }],
        toolchain,
    )
    .with_context(|| {
        format!(
            "building the eBPF programs with toolchain {} (needs its rust-src, and bpf-linker \
             built against the same LLVM major as that rustc: run scripts/setup.sh)",
            toolchain_name.as_deref().unwrap_or("nightly")
        )
    })
}

//! trueip's eBPF programs. The programs are the `[[bin]]` targets (one per file, built for
//! `bpfel-unknown-none` by `agent/build.rs`); this library target only exists so that the agent
//! can name this crate as a build-dependency and be rebuilt when the programs change.
#![no_std]

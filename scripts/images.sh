#!/usr/bin/env bash
# `make images`: the chart's three default images, built from static (musl) binaries with
# buildah, FROM scratch, and written as OCI archives under target/images/ — for
# `kind load image-archive`, `ctr images import`, `podman load` or `crane push`.
#
#   ghcr.io/trueip/trueip-sidecar:<appVersion>    uid 65532 (the chart's sidecar.runAsUser)
#   ghcr.io/trueip/trueip-injector:<appVersion>   uid 65532
#   ghcr.io/trueip/trueip-agent:<appVersion>      uid 0 (it loads eBPF programs; the chart runs it privileged)
#
# IMAGE_REPOSITORY overrides ghcr.io/trueip. No container runs: buildah copies the binary into
# an empty root and commits it, which needs no container runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
OUT=target/images
REPOSITORY=${IMAGE_REPOSITORY:-ghcr.io/trueip}
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/trueip/Chart.yaml)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# vfs works on any root filesystem (overlay on overlay does not); the images are small.
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs}

log() { printf '[images] %s\n' "$*" >&2; }

command -v buildah >/dev/null || { log "buildah is missing: run scripts/setup.sh"; exit 1; }
[ -n "$VERSION" ] || { log "no appVersion in charts/trueip/Chart.yaml"; exit 1; }

log "building static binaries ($TARGET)"
cargo build --release --locked --target "$TARGET" \
  -p trueip-sidecar --bin trueip-sidecar \
  -p trueip-injector --bin trueip-injector \
  -p trueip-agent --bin trueip-agent

mkdir -p "$OUT"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
for component in sidecar injector agent; do
  bin="trueip-$component"
  image="$REPOSITORY/$bin:$VERSION"
  case "$component" in
    sidecar) user=65532:65532; what="PROXY protocol sidecar: the app sees the real client address" ;;
    injector) user=65532:65532; what="mutating webhook that injects the trueip sidecar" ;;
    agent) user=0:0; what="node agent: eBPF programs that restore client addresses" ;;
  esac
  strip -o "$staging/$bin" "target/$TARGET/release/$bin"
  container=$(buildah from --quiet scratch)
  buildah copy --quiet --chmod 0555 "$container" "$staging/$bin" "/usr/local/bin/$bin" >/dev/null
  buildah config \
    --entrypoint "[\"/usr/local/bin/$bin\"]" --cmd '' --user "$user" \
    --label "org.opencontainers.image.title=$bin" \
    --label "org.opencontainers.image.description=trueip $what" \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "org.opencontainers.image.revision=$REVISION" \
    --label "org.opencontainers.image.source=https://github.com/trueip/trueip" \
    --label "org.opencontainers.image.licenses=Apache-2.0" \
    "$container"
  buildah commit --quiet --rm "$container" "$image" >/dev/null
  rm -f "$OUT/$bin.tar"
  buildah push --quiet "$image" "oci-archive:$OUT/$bin.tar:$image" >/dev/null
  log "$image -> $OUT/$bin.tar ($(du -h "$OUT/$bin.tar" | cut -f1))"
done

#!/usr/bin/env bash
# Runs every fuzz target of the PROXY header decoder for SECONDS each (default 60), starting
# from the committed seeds (real senders' headers), and records executions and the outcome.
# `make test` runs it for a few seconds as a smoke test; `make fuzz` runs the long form and
# writes proxy-header/fuzz/RESULTS.md.
set -euo pipefail
seconds=${1:-60}
results=${2:+$(realpath -m "$2")}
cd "$(dirname "$0")/../proxy-header"
targets=$(cargo +nightly fuzz list)
rows=()
for t in $targets; do
  mkdir -p "fuzz/corpus/$t"
  log=$(mktemp)
  # -rss_limit_mb: an input that makes the decoder allocate wildly is a failure too.
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" fuzz/seeds -- \
      -max_total_time="$seconds" -rss_limit_mb=512 -timeout=5 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz target $t FAILED (crash, hang or over-allocation); reproducer in fuzz/artifacts/$t" >&2
    exit 1
  fi
  runs=$(sed -n 's/^Done \([0-9]*\) runs in .*/\1/p' "$log" | tail -1)
  echo "fuzz target $t: $runs executions in ${seconds}s, no crash, hang or over-allocation" >&2
  rows+=("| \`$t\` | $seconds s | $runs | none |")
  rm -f "$log"
done
if [ -n "$results" ]; then
  {
    echo "# Fuzzing results"
    echo
    echo "Run by \`make fuzz\` on $(date -u +%Y-%m-%d), $(nproc) cores, kernel $(uname -r),"
    echo "$(rustc +nightly --version). Each target starts from \`fuzz/seeds/\` (headers of HAProxy,"
    echo "AWS NLB and LoxiLB) and the corpus of earlier runs; libFuzzer with AddressSanitizer,"
    echo "\`-rss_limit_mb=512 -timeout=5\`."
    echo
    echo "| target | time | executions | crashes, hangs, over-allocation |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    echo "* \`decode\`: arbitrary bytes; the decoder never panics, never consumes more than it was"
    echo "  given or than the cap, and what it accepts re-encodes to the same addresses and TLVs."
    echo "* \`chunked\`: the sidecar's read loop fed arbitrary chunking; every prefix decision agrees"
    echo "  with the decision on the whole input, and no header stays undecided past the cap."
  } > "$results"
fi

#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer): `make fuzz` runs every target for
# FUZZ_SECONDS (default 120). `make test` does not build libFuzzer: it replays the seeds, any
# crash inputs in fuzz/artifacts/ and a fixed set of mutants through the same properties
# (fuzz/tests/corpus.rs). A crash fails the run and leaves the input in
# fuzz/artifacts/<target>/, where `make test` replays it too; reproduce it with
#   cargo fuzz run --fuzz-dir fuzz -s none <target> fuzz/artifacts/<target>/<file>
#
# The stable toolchain has no -Zsanitizer, so targets build with `-s none`: the code under
# test has no unsafe code of its own, and libFuzzer's coverage, comparisons tracing and
# the targets' own assertions still apply.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

seconds=${FUZZ_SECONDS:-120}
targets=${FUZZ_TARGETS:-session_codec redirect path_normalizer config render_input}
cargo_fuzz_version=0.13.1

if ! cargo fuzz --version 2>/dev/null | grep -q " $cargo_fuzz_version"; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version" >&2
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version" >&2
fi

# Fuzz builds are instrumented anyway: thin LTO over five binaries only costs link time.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_STRIP=none
# One target dir for every fuzz build, beside the workspace's own.
fuzz=(cargo fuzz run --fuzz-dir fuzz -s none --target-dir target/fuzz)
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cargo fuzz build --fuzz-dir fuzz -s none --target-dir target/fuzz >&2

for t in $targets; do
  mkdir -p "$corpus/$t"
  echo "fuzz: $t for ${seconds}s" >&2
  # The first directory collects new inputs; the seeds are only read.
  "${fuzz[@]}" "$t" "$corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$corpus/$t.log" \
    || { tail -n 40 "$corpus/$t.log" >&2; echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2; exit 1; }
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$corpus/$t.log" | sed "s/^/fuzz: $t /" >&2
done
echo "fuzz: every target ran ${seconds}s without a crash" >&2

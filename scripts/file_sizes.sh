#!/usr/bin/env bash
# No Rust source file over 600 lines (tests included): a file that grows past it holds more
# than one thing and should be split by what it owns (issue 22). Part of `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=600
over=$(git ls-files '*.rs' | xargs wc -l | awk -v l=$limit '$2 != "total" && $1 > l { print "  " $2 ": " $1 " lines" }')
[ -z "$over" ] || { echo "files over $limit lines:"$'\n'"$over" >&2; exit 1; }

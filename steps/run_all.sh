#!/usr/bin/env bash
# Steps 1-6 in order; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
for step in "$STEPS_DIR"/[1-6]_*.sh; do
    bash "$step"
done
echo "results: $OUT/results.json, $OUT/recall.md, $OUT/throughput_*.md"; echo
cat "$OUT/recall.md" "$OUT"/throughput_*.md

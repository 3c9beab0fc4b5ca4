#!/usr/bin/env bash
# Steps 1-7 in order; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
for step in "$STEPS_DIR"/[1-7]_*.sh; do
    bash "$step"
done
echo "results: $OUT/report.md, $OUT/results.json, $OUT/throughput.png"; echo
cat "$OUT/recall.md" "$OUT"/accuracy_vs_torch.md "$OUT"/throughput_*.md 2>/dev/null || true

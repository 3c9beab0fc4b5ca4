#!/usr/bin/env bash
# Steps 1-7 in order; configuration: see steps/common.sh. A step that exits 1 (a failed check, its
# outputs written) does not stop the later steps, but the run exits 1; any other failure stops it:
# 2 (a setting or input to fix, said in one line), 3 (an unexpected error), 130 (interrupted).
source "$(dirname "$0")/common.sh"
status=0
for step in "$STEPS_DIR"/[1-7]_*.sh; do
    bash "$step" || { rc=$?; [ "$rc" -eq 1 ] || exit "$rc"; status=1; }
done
exit "$status"  # step 7 ended with where the report is and the verdict per backend

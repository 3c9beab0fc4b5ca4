#!/usr/bin/env bash
# Step 7 (report): report.md from the earlier steps' results; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 7

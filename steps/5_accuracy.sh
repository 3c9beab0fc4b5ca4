#!/usr/bin/env bash
# Step 5 (accuracy) of the ModelZoo flow; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 5

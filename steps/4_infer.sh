#!/usr/bin/env bash
# Step 4 (infer) of the ModelZoo flow; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 4

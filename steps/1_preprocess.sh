#!/usr/bin/env bash
# Step 1 (preprocess) of the ModelZoo flow; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 1

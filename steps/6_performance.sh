#!/usr/bin/env bash
# Step 6 (performance) of the ModelZoo flow; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 6

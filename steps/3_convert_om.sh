#!/usr/bin/env bash
# Step 3 (convert_om) of the ModelZoo flow; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 3

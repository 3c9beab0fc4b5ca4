#!/usr/bin/env bash
# Step 2 (export_onnx) of the ModelZoo flow; configuration: see steps/common.sh.
source "$(dirname "$0")/common.sh"
run_step 2

#!/usr/bin/env bash
# Shell entry for step 3: bash convert/onnx2om.sh models/vit_b_32 [more convert/onnx2om.py flags]
# Compiles PREFIX_vision.onnx and PREFIX_text.onnx to OMs with atc for the detected chip.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: bash convert/onnx2om.sh ONNX_PREFIX [--batch-sizes 1,4,8] [--soc-version Ascend910B4] ..." >&2
    exit 2
fi
prefix=$1
shift
exec "${PYTHON:-python3}" "$(dirname "$0")/onnx2om.py" --onnx-prefix "$prefix" "$@"

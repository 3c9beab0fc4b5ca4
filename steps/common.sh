# Shared by the numbered steps: one configuration, from the environment.
#   OUT          run folder                       (default outputs/demo)
#   DATA_DIR     flickr30k folder                 (default: generate the bundled sample set)
#   TASK         retrieval, zeroshot or retrieval,zeroshot (default retrieval); with zeroshot alone DATA_DIR
#                is the class folders (ROOT/<class>/*.jpg)
#   ZEROSHOT_DIR zero-shot class folders with both tasks (default: generate the colour sample)
#   ZEROSHOT_DATASET built-in class names and templates: imagenet1k, cifar10, cifar100; CLASSNAMES /
#                TEMPLATES: files instead (one per line; templates with {c})
#   DATASET      DATA_DIR's layout: flickr30k, or mscoco (CLIP_benchmark's val2014/ + coco_test_karpathy.json)
#   MODEL_NAME   open_clip model name             (default openclip-ascend-tiny, the bundled model)
#   PRETRAINED   checkpoint file, pretrained tag (downloaded as open_clip does; HF_ENDPOINT for a mirror) or none
#                (default: the bundled tiny weights; laion2b_s34b_b79k for other models)
#   REQUIRE_IDLE 1: a busy NPU before step 6 stops the run (default 0: a warning)
#   BATCH_SIZES  comma-separated                  (default 1,4,8)
#   BACKEND      auto | ascend | onnxruntime      (default auto: the NPU where npu-smi is; it then needs atc,
#                ais_bench and aclruntime too)
#   SOC_VERSION  atc --soc_version                (default: read from npu-smi info)
#   REFERENCE    0 to skip the PyTorch reference  (default 1)
#   PERF_LOOPS   pure-inference loops per figure  (default 20)
#   PERF_BUDGET  seconds a noisy figure may be measured again until stable (default 0: marked noisy)
#   INT8         1 adds the int8 ONNX Runtime fallback (default 0)
#   FP16_ESTIMATE 1 adds a CPU estimate of an fp16 OM's accuracy (default 0)
#   GPU          1 adds ONNX Runtime on CUDA (needs onnxruntime-gpu; default 0)
#   DYNAMIC_BATCH 1 compiles one dynamic-batch OM per tower, run at each batch size (default 0)
#   DEVICES      NPU ids, e.g. 0,1: one process per device, throughput summed (default 0)
#   PRECISION    atc precision: fp16, fp32, mixed or vision=mixed,text=fp16 (default fp16)
#   PRECISION_SEARCH 1: after step 2, find each tower's nodes to keep in fp32 (fp16 simulation); step 3
#                compiles with them unless PRECISION is set (default 0)
#   TEXT_LENGTHS dyn: ONNX Runtime runs each batch of length-sorted captions only as far as its longest
#                (exact); add token counts, e.g. dyn,32, for length-bucket OMs; full: 77 tokens always (default dyn)
#   VARIANTS     Ascend: step 6 also sweeps atc preset combinations, e.g. base,npu,npu+hp,npu+hp+smallch,npu+aipp,
#                and chooses the fastest that keeps PyTorch's accuracy (default: none)
#   ACCURACY_SUBSET images the sweep judges accuracy on (default 200; 0: all)
#   PROFILE      1, Ascend: step 6 also runs the largest batch size under msprof (default 0)
#   PEAK_TFLOPS  the chip's fp16 peak, shown beside the profile's achieved TFLOP/s
#   AIPP_ESTIMATE 1: step 5 estimates the accuracy cost of uint8 input normalised by AIPP (default 0)
#   ON_ERROR     stop | skip: a bad image or caption line stops step 1, or is left out and recorded (default stop)
#   RECONFIGURE  1: apply settings that differ from the run's (OUT/settings.json) and mark what they change stale
#   PYTHON       interpreter                      (default: the kit's .venv if there is one, else python3)
# Every value is checked before step 1; the run's settings are kept in $OUT/settings.json, and a step
# run alone later reads them there.
set -euo pipefail
STEPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$STEPS_DIR")
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export OUT=${OUT:-outputs/demo}

run_step() {
    "$PYTHON" "$ROOT/openclip_pipeline.py" --steps "$1"
}

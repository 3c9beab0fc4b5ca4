"""Stand-in for `python3 -m ais_bench`: the reference flags and output layout, over InferSession."""

import argparse
import json
import os
import re
import sys

import numpy as np

from ais_bench.infer.interface import InferSession

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from record import record  # noqa: E402

WORDINGS = (
    "[INFO] throughput 1000*batchsize.mean({b})/NPU_compute_time.mean({t}): {f}",
    "[INFO] throughput 1000*batchsize({b})/NPU_compute_time.mean({t}): {f}",
    "[INFO] Throughput 1000*batchsize.mean({b})/NPU_compute_time.mean({t}): {f}",
)

parser = argparse.ArgumentParser()
parser.add_argument("--model", "-m", required=True)
parser.add_argument("--input", "-i")
parser.add_argument("--output", "-o")
parser.add_argument("--output_dirname")
parser.add_argument("--outfmt", default="BIN")
parser.add_argument("--loop", "-l", type=int, default=1)
parser.add_argument("--device", "-d", default="0")
parser.add_argument("--batchsize", type=int, default=1)
parser.add_argument("--dymBatch", type=int, default=0)
parser.add_argument("--warmup_count", type=int, default=1)
args = parser.parse_args()
record("ais_bench", argv=sys.argv[1:])

session = InferSession(int(args.device.split(",")[0]), args.model)
if args.dymBatch:
    session.set_dynamic_batchsize(args.dymBatch)
desc = session.get_inputs()[0]
batch = args.dymBatch or desc.shape[0]
if args.input:
    names = sorted(os.listdir(args.input), key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])
    files = [os.path.join(args.input, n) for n in names if n.endswith(".npy")]
else:
    files = []
out_dir = os.path.join(args.output, args.output_dirname or "2024_01_01-00_00_00") if args.output else None
if out_dir:
    os.makedirs(out_dir, exist_ok=True)
groups = [files[i:i + batch] for i in range(0, len(files), batch)] or [None] * args.loop
for group in groups:
    if group is None:
        session.infer([np.zeros([batch] + desc.shape[1:], dtype=session.np_dtype)])
        continue
    arrays = [np.load(f) for f in group]
    arrays += [arrays[0]] * (batch - len(arrays))
    output = session.infer([np.concatenate(arrays)])[0]
    for row, path in zip(output, group):
        if out_dir:
            np.save(os.path.join(out_dir, os.path.basename(path).split(".")[0] + "_0.npy"), row[None])
times = np.array(session.sumary().exec_time_list)
mean = float(times.mean())
throughput = 1000 * args.batchsize / mean
print(f"[INFO] NPU_compute_time (ms): min = {times.min()}, max = {times.max()}, mean = {mean}, "
      f"median = {np.median(times)}, percentile(99%) = {np.percentile(times, 99)}")
print(WORDINGS[int(os.environ.get("FAKE_AIS_BENCH_WORDING", "0"))].format(b=args.batchsize, t=mean, f=throughput))
if args.output:
    stats = {"min": float(times.min()), "max": float(times.max()), "mean": mean, "median": float(np.median(times)),
             "percentile(99%)": float(np.percentile(times, 99)), "count": int(times.size)}
    with open(os.path.join(args.output, (args.output_dirname or "2024_01_01-00_00_00") + "_summary.json"), "w") as f:
        json.dump({"NPU_compute_time": stats, "throughput": throughput, "args": vars(args)}, f)

"""Stand-in for `python3 -m ais_bench` (Ascend/tools, ais-bench_workload/tool/ais_bench), over the
InferSession stand-in, doing what the reference file documents the real front end does:

--batchsize only feeds the throughput figure and, absent, comes from the model (static first axis or
--dymBatch); with inputs every batch is executed --loop times; files are natural-sorted, stacked
model-batch / file-batch at a time, the short last batch padded with its first file (run, timed, not
saved); outputs ``{stem}_{i}.{fmt}`` (TXT: rows of ``%f`` values, space-separated); pure inference with
--output writes ``pure_infer_data_0.{fmt}``; the summary JSON (filesinfo per input file, args as a list)
lands at ``O/D_summary.json``; --device 0,1 runs one process per device over chunks of ceil(n / devices)
files into ``O/D/device{N}/`` with ``O/D/device{N}_summary.json`` each, then prints
``i:… device_… throughput:…`` per device and ``[INFO] summary throughput:…``. --dump 1 needs --output
and writes ``O/acl.json`` (dump_path ``O/dump``, the model's file name without extension) for the session,
as the real get_acl_json_path does; --acl_json_path names one instead.
"""

import argparse
import json
import math
import multiprocessing
import os
import re
import sys
import time

import numpy as np

from ais_bench.infer.interface import InferSession

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from record import record  # noqa: E402

WORDINGS = (
    "[INFO] throughput 1000*batchsize.mean({b})/NPU_compute_time.mean({t}): {f}",
    "[INFO] throughput 1000*batchsize({b})/NPU_compute_time.mean({t}): {f}",
    "[INFO] Throughput 1000*batchsize.mean({b})/NPU_compute_time.mean({t}): {f}",
)
SUFFIXES = (".npy", ".NPY", ".bin", ".BIN")


def str2bool(value):
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError("Boolean value expected true, 1, false, 0 with case insensitive.")


def acl_json_path(args):
    if args.acl_json_path is not None or not args.dump:
        return args.acl_json_path
    dump_path = os.path.join(args.output, "dump")
    os.makedirs(dump_path, 0o755, exist_ok=True)
    path = os.path.join(args.output, "acl.json")
    with open(path, "w") as handle:
        json.dump({"dump": {"dump_path": dump_path, "dump_mode": "all", "dump_list": [
            {"model_name": args.model.split("/")[-1].split(".")[0]}]}}, handle, indent=4, separators=(", ", ": "),
            sort_keys=True)
    return path


def devices(text):
    values = [int(v) for v in text.split(",")]
    return values if len(values) > 1 else values[0]


def natural(name):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def input_files(inputs, model_inputs):
    """--input as io_oprations.check_input_parameter takes it: files (all of them, as given), or exactly one folder
    per model input; anything else is refused."""
    items = inputs.split(",")
    if os.path.isfile(items[0]):
        missing = [item for item in items if not os.path.isfile(item)]
        if missing:
            print(f"[ERROR] Invalid input args.--input:{items} input[{items.index(missing[0])}]:{missing[0]} not exist")
            raise RuntimeError()
        return items
    if not os.path.isdir(items[0]):
        print(f"[ERROR] Invalid args. {items[0]}  of --input is invalid")
        raise RuntimeError()
    if len(items) != model_inputs:
        print(f"[ERROR] Invalid args. args input dir num:{len(items)} not equal to model inputs num:{model_inputs}")
        raise RuntimeError()
    return [os.path.join(items[0], n) for n in sorted(os.listdir(items[0]), key=natural) if n.endswith(SUFFIXES)]


def compute_times(session):
    """ms per execute: the 2023 back end's floats, or the newer one's (start, end) pairs, as each CLI reads them."""
    summary = session.sumary() if hasattr(session, "sumary") else session.summary()
    return [entry[1] - entry[0] if isinstance(entry, (tuple, list)) else entry for entry in summary.exec_time_list]


def content(path, dtype):
    if path.endswith((".npy", ".NPY")):
        return np.load(path)
    return np.fromfile(path, dtype=dtype)


def save(path, array):
    if path.endswith(".npy"):
        np.save(path, array)
    elif path.endswith(".txt"):
        rows = array.reshape(-1, array.shape[-1])
        fmt = "%f" if rows.dtype.kind == "f" else "%d"
        with open(path, "wb") as handle:
            for row in rows:
                np.savetxt(handle, np.c_[row], fmt=fmt, newline=" ")
                handle.write(b"\n")
    else:
        array.tofile(path)


def stats(times):
    if not times:
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "percentile(99%)": 0.0, "count": 0}
    return {"min": float(np.min(times)), "max": float(np.max(times)), "mean": float(np.mean(times)),
            "median": float(np.median(times)), "percentile(99%)": float(np.percentile(times, 99)),
            "count": len(times)}


def numpy_type(desc):
    return np.dtype(str(desc.datatype).rsplit(".", 1)[-1])  # aclruntime's dtype names are numpy's


def feed_of(group, per_batch, desc):
    """One model batch from ``group``'s files, the short last one padded with its first file."""
    arrays = [content(f, numpy_type(desc)).reshape([-1] + list(desc.shape[1:])) for f in group]
    return np.concatenate(arrays + [arrays[0]] * (per_batch - len(group)))


def main(args, device, output_dirname, share=None):
    session = InferSession(device, args.model, acl_json_path(args))
    if args.dymBatch:
        session.set_dynamic_batchsize(args.dymBatch)
    desc = session.get_inputs()[0]
    files = share if share is not None else (input_files(args.input, len(session.get_inputs())) if args.input else [])
    batchsize = args.batchsize if args.batchsize is not None else (args.dymBatch or desc.shape[0])
    model_batch = args.dymBatch or desc.shape[0]  # -1 on a dynamic-batch OM without --dymBatch
    out_dir = os.path.join(args.output, output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S")) if args.output else None
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    filesinfo = {}
    zeros = np.zeros([model_batch] + list(desc.shape[1:]), dtype=numpy_type(desc))
    per_batch = 1
    if files:
        per_file = content(files[0], numpy_type(desc)).reshape([-1] + list(desc.shape[1:])).shape[0]
        per_batch = model_batch // per_file
    for _ in range(args.warmup_count):  # the first batch's files (infileslist[0]), untimed
        session.infer([zeros if not files else feed_of(files[:per_batch], per_batch, desc)])
    (session.reset_sumaryinfo if hasattr(session, "reset_sumaryinfo") else session.reset_summaryinfo)()  # warm-up
    if not files:
        for _ in range(args.loop):
            output = session.infer([zeros])[0]
        if out_dir:
            save(os.path.join(out_dir, f"pure_infer_data_0.{args.outfmt.lower()}"), output)
    else:
        for index in range(math.ceil(len(files) / per_batch)):
            group = files[index * per_batch:(index + 1) * per_batch]
            feed = feed_of(group, per_batch, desc)
            for _ in range(args.loop):
                output = session.infer([feed])[0]
            for j, path in enumerate(group):
                sample_id = index * per_batch + j
                entry = filesinfo.setdefault(sample_id, {"infiles": [path], "outfiles": []})
                if out_dir:
                    target = os.path.join(out_dir, f"{os.path.basename(path).split('.')[0]}_0.{args.outfmt.lower()}")
                    save(target, output[j * per_file:(j + 1) * per_file])
                    entry["outfiles"].append(target)
    times = compute_times(session)
    compute = stats(times)
    throughput = 1000 * batchsize / compute["mean"] if compute["mean"] else 0
    print("[INFO] -----------------Performance Summary------------------")
    print(f"[INFO] NPU_compute_time (ms): min = {compute['min']}, max = {compute['max']}, mean = {compute['mean']}, "
          f"median = {compute['median']}, percentile(99%) = {compute['percentile(99%)']}")
    print(WORDINGS[int(os.environ.get("FAKE_AIS_BENCH_WORDING", "0"))].format(b=batchsize, t=compute["mean"],
                                                                              f=throughput))
    print("[INFO] ------------------------------------------------------")
    if out_dir:
        with open(out_dir + "_summary.json", "w", encoding="utf-8") as handle:
            json.dump({"filesinfo": filesinfo, "args": sys.argv, "NPU_compute_time": compute,
                       "H2D_latency": stats([]), "D2H_latency": stats([]), "throughput": throughput,
                       "npu_compute_time_list": list(times), "pid": os.getpid()}, handle)
    session.finalize()
    return throughput


def device_run(job):
    args, files, device, dirname, index = job
    start = time.time()
    throughput = main(args, device, dirname, files)
    return index, throughput, start, time.time()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", "-m", required=True)
    parser.add_argument("--input", "-i", default=None)
    parser.add_argument("--output", "-o", default=None)
    parser.add_argument("--output_dirname", default=None)
    parser.add_argument("--outfmt", default="BIN", choices=["NPY", "BIN", "TXT"])
    parser.add_argument("--loop", "-l", type=int, default=1)
    parser.add_argument("--device", "-d", type=devices, default=0)
    parser.add_argument("--batchsize", type=int, default=None)
    parser.add_argument("--dymBatch", type=int, default=0)
    parser.add_argument("--warmup_count", type=int, default=1)
    parser.add_argument("--debug", default=False)
    parser.add_argument("--dump", type=str2bool, default=False)
    parser.add_argument("--acl_json_path", default=None)
    args = parser.parse_args()
    if args.dump and args.output is None:
        print("[ERROR] when dump or profiler, miss output path, please check them!", file=sys.stderr)
        raise RuntimeError("miss output parameter!")
    record("ais_bench", argv=sys.argv[1:])
    if not isinstance(args.device, list):
        main(args, args.device, args.output_dirname)
        sys.exit(0)
    files = input_files(args.input, 1) if args.input else []  # the kit's OMs have one input
    chunk = math.ceil(len(files) / len(args.device)) if files else 0
    shares = [files[i * chunk:(i + 1) * chunk] for i in range(len(args.device))] if files else [[]] * len(args.device)
    dirname = args.output_dirname or time.strftime("%Y_%m_%d-%H_%M_%S")
    jobs = [(args, share, device, os.path.join(dirname, f"device{device}"), index)
            for index, (device, share) in enumerate(zip(args.device, shares))]
    with multiprocessing.get_context("fork").Pool(len(jobs)) as pool:  # as the real one's Pool on Linux
        results = pool.map(device_run, jobs)
    for index, throughput, start, end in results:
        print(f"i:{index} device_{args.device[index]} throughput:{throughput} start_time:{start} end_time:{end}")
    print(f"[INFO] summary throughput:{sum(r[1] for r in results)}")

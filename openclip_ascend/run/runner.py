"""Step 4: run a session over per-sample input files exactly the way ais_bench lays out its work.

Input files are natural-sorted, stacked ``model batch / file batch`` at a time, the last short
batch padded with copies of its own first file (padding runs, is timed, and is never saved), and
each output is written as ``{input stem}_0.{npy|bin|txt}`` in ``output/output_dirname``, with
``{output_dirname}_summary.json`` beside that folder and ais_bench's summary lines on stdout.
Compute time is taken around the synchronous ``run`` call only, as ais_bench times the execute.
"""

import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.dataset import image_stem, stem_clash
from ..files import KitError, atomic_path, natural_key, save_npy, write_json
from ..model.text_lengths import length_plan, token_widths

OUTPUT_FORMATS = ("NPY", "BIN", "TXT")
INPUT_SUFFIXES = (".npy", ".NPY", ".bin", ".BIN")  # what ais_bench reads; .bin is raw bytes of the model's dtype
PURE_INFER_STEM = "pure_infer_data"  # ais_bench's name for the zero-filled input of pure inference


def list_input_files(inputs):
    """ais_bench ``--input`` for the one-input models of this kit, as its front end takes it: one folder (its
    files natural-sorted), or files (in the order given). Several folders name several model inputs:
    ais_bench refuses them for a one-input model, and so does the kit."""
    items = [Path(item.strip()) for item in str(inputs).split(",")]
    if items[0].is_dir():
        if len(items) != 1:
            raise KitError(f"--input {inputs}: args input dir num:{len(items)} not equal to model inputs num:1 (ais_bench "
                           "takes one folder per model input); give one folder, or the files themselves")
        found = [p for p in items[0].iterdir() if p.suffix in INPUT_SUFFIXES]
        if not found:
            raise KitError(f"{items[0]}: no .npy or .bin files in this input folder; run openclip_preprocess.py first")
        files = sorted(found, key=lambda p: natural_key(p.name))
    else:
        for path in items:
            if not path.is_file():
                raise KitError(f"{path}: --input path not found" + (" (a list of files holds files only)"
                                                                    if path.is_dir() else ""))
            if path.suffix not in INPUT_SUFFIXES:
                raise KitError(f"{path}: ais_bench reads .npy and .bin inputs; convert it or use openclip_preprocess.py")
        files = items
    clash = stem_clash(files)
    if clash:
        raise KitError(f"{clash[0]} and {clash[1]}: both would write the output {image_stem(clash[0])}_0 (ais_bench "
                       "names outputs by the part before the first dot); rename one of them")
    return files


def model_batch_size(session, batch_size):
    """The batch one run takes: a static first axis wins over ``--batchsize`` (default 1 for a
    dynamic-batch ONNX), as on an OM."""
    static = session.input_shape[0]
    return static if static is not None else (batch_size or 1)


def load_sample(path, session):
    """An input file as ais_bench reads it: ``.npy`` as saved, ``.bin`` as raw bytes of the model's input
    dtype, shaped as whole samples of the model's input."""
    if path.suffix.lower() == ".npy":
        return np.load(path)
    raw = np.fromfile(path, dtype=session.input_dtype)
    per_sample = int(np.prod([d for d in session.input_shape[1:]]))
    if raw.size == 0 or raw.size % per_sample:
        raise KitError(f"{path}: {raw.nbytes} bytes are not whole samples of the model's input {session.input_name!r} "
                       f"({session.input_dtype}, {per_sample * raw.itemsize} bytes each)")
    return raw.reshape((-1,) + tuple(session.input_shape[1:]))


def _check_sample(path, array, session):
    expected = session.input_shape[1:]
    if array.dtype != session.input_dtype or array.ndim != len(session.input_shape) or any(
            want is not None and got != want for got, want in zip(array.shape[1:], expected)):
        shape = "×".join("B" if d is None else str(d) for d in session.input_shape)
        raise KitError(f"{path}: array is {array.dtype} {tuple(array.shape)}, the model's input "
                       f"{session.input_name!r} takes {session.input_dtype} {shape}; re-run openclip_preprocess.py "
                       "with the model's --model-name")


def _save_output(path_stem, array, outfmt):
    if outfmt == "NPY":
        save_npy(f"{path_stem}.npy", array)
    elif outfmt == "BIN":
        with atomic_path(f"{path_stem}.bin") as tmp:
            array.tofile(tmp)
    else:  # ais_bench: rows of the last axis, "%f" values space-separated (a space before each newline)
        rows = array.reshape(-1, array.shape[-1])
        fmt = "%f" if rows.dtype.kind == "f" else "%d"
        with atomic_path(f"{path_stem}.txt") as tmp, open(tmp, "wb") as handle:
            for row in rows:
                np.savetxt(handle, row[None], fmt=fmt, delimiter=" ", newline=" ")
                handle.write(b"\n")


def stats(times_ms):
    """ais_bench's summary statistics of a list of times (all zero for an empty list)."""
    if not len(times_ms):
        return {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "percentile(99%)": 0.0, "count": 0}
    times = np.asarray(times_ms, dtype=np.float64)
    return {"min": float(times.min()), "max": float(times.max()), "mean": float(times.mean()),
            "median": float(np.median(times)), "percentile(99%)": float(np.percentile(times, 99)),
            "count": int(times.size)}


def _timed_run(session, batch):
    """Run once; the time is the session's own execute time where it keeps one (Ascend), else the
    host time around the synchronous call."""
    start = time.perf_counter()
    output = session.run(batch)
    elapsed = (time.perf_counter() - start) * 1000.0
    execute_ms = getattr(session, "last_execute_ms", None)
    return output, (execute_ms() if execute_ms else elapsed)


def run_files(session, files, output_dir, batch_size=1, outfmt="NPY", loop=1, warmup_count=1):
    """Infer every file; returns (compute times in ms, filesinfo, model batch, tokens per sample run: None
    unless the session trims text).

    Writes one output per input file into ``output_dir``; with ``output_dir`` None nothing is
    saved, as ais_bench saves nothing without ``--output``. A text session that runs shorter than its
    files (``text_lengths.token_widths``) gets the files sorted by caption length and each batch cut
    to the width it needs; outputs and their names are the same.
    """
    batch = model_batch_size(session, batch_size)
    samples = [load_sample(path, session) for path in files]
    for path, array in zip(files, samples):
        _check_sample(path, array, session)
    file_batch = samples[0].shape[0]
    if batch % file_batch:
        raise KitError(f"{files[0]}: holds {file_batch} samples, which does not divide the model batch {batch}")
    per_run = batch // file_batch
    widths = token_widths(session)
    if widths is None:
        plan = [(list(range(i, min(i + per_run, len(files)))), None) for i in range(0, len(files), per_run)]
    else:
        plan = length_plan(samples, per_run, widths)
    times, filesinfo = [], {}

    def stacked(group, width):
        padded = group + [group[0]] * (per_run - len(group))  # ais_bench pads with the batch's first file
        inputs = np.concatenate([samples[i] for i in padded], axis=0)
        return inputs if width is None else np.ascontiguousarray(inputs[:, :width])

    # every compiled length its first run (an OM's first execute is slow); a dynamic graph once
    warm = {}
    for group, width in plan if isinstance(widths, tuple) else plan[:1]:
        warm.setdefault(width, group)
    for width, group in warm.items():
        for _ in range(warmup_count):
            session.run(stacked(group, width))
    for group, width in tqdm(plan, desc=f"infer bs{batch}", unit="batch"):
        inputs = stacked(group, width)
        for _ in range(loop):
            output, elapsed = _timed_run(session, inputs)
            times.append(elapsed)
        for position, file_index in enumerate(group):  # ais_bench: one entry per input file
            entry = {"infiles": [str(files[file_index])], "outfiles": []}
            if output_dir is not None:
                target = Path(output_dir) / f"{image_stem(files[file_index].name)}_0"
                _save_output(target, output[position * file_batch:(position + 1) * file_batch], outfmt)
                entry["outfiles"].append(f"{target}.{outfmt.lower()}")
            filesinfo[file_index] = entry
    tokens = sum(width * len(group) for group, width in plan) / len(files) if widths is not None else None
    return times, dict(sorted(filesinfo.items())), batch, tokens


def run_pure(session, batch_size=1, loop=1, warmup_count=1, output_dir=None, outfmt="BIN"):
    """Pure-inference throughput on zero-filled data, as ais_bench does without ``--input``; with an
    output folder the last output is saved as ``pure_infer_data_0.<fmt>``, as ais_bench saves it. A
    text session with shorter lengths runs its longest (the full context)."""
    batch = model_batch_size(session, batch_size)
    shape = (batch,) + tuple(dim if dim is not None else 1 for dim in session.input_shape[1:])
    widths = token_widths(session)
    if widths:  # the full length: what the reference's fixed-length model runs
        shape = (batch, max(widths))
    zeros = np.zeros(shape, dtype=session.input_dtype)
    if session.input_dtype == np.int64 and len(shape) == 2:
        zeros[:, 0] = 49407  # an all-zero token row has no EOT; put the pooled token first
    for _ in range(warmup_count):
        session.run(zeros)
    times = []
    for _ in tqdm(range(loop), desc=f"pure infer bs{batch}", unit="loop"):
        output, elapsed = _timed_run(session, zeros)
        times.append(elapsed)
    if output_dir is not None:
        _save_output(Path(output_dir) / f"{PURE_INFER_STEM}_0", output, outfmt)
    return times, batch


NOISY_CV = 0.10  # run-to-run coefficient of variation above which a throughput figure is marked noisy
NOISY_TAIL = 2.0  # … or a p99 run time above this many times the median


def spread(times_ms):
    """How much the timed runs vary, and whether that makes the mean-based figure unreliable."""
    times = np.asarray(times_ms, dtype=np.float64)
    if times.size < 2 or not times.mean():
        return {"cv": 0.0, "p99_over_median": 1.0, "noisy": False}
    cv = float(times.std() / times.mean())
    tail = float(np.percentile(times, 99) / np.median(times))
    return {"cv": cv, "p99_over_median": tail, "noisy": cv > NOISY_CV or tail > NOISY_TAIL}


def latency_percentiles(times_ms):
    return {f"p{q}": float(np.percentile(times_ms, q)) if len(times_ms) else 0.0 for q in (50, 90, 99)}


def end_to_end(seconds, samples):
    """Wall time over real samples: reading inputs, padding, warm-up, inference and writing outputs."""
    return {"seconds": seconds, "samples": samples, "fps": samples / seconds if seconds else 0.0}


def summarise(times_ms, batch, args, filesinfo=None, backend="", tokens=None):
    """ais_bench's summary dict: compute-time stats, throughput = 1000 × batch / mean ms, plus the
    latency percentiles the perf report shows and, for a text session that trims, the tokens each
    sample ran on average."""
    compute = stats(times_ms)
    throughput = 1000.0 * batch / compute["mean"] if compute["mean"] else 0.0
    return {"NPU_compute_time": compute, "H2D_latency": stats([]), "D2H_latency": stats([]),
            "throughput": throughput, "latency_ms": latency_percentiles(times_ms), "spread": spread(times_ms),
            "batchsize": batch,
            "backend": backend,
            "npu_compute_time_list": [float(t) for t in times_ms], "filesinfo": filesinfo or {},
            "args": args, "pid": os.getpid(), **({"tokens_per_sample": tokens} if tokens is not None else {})}


def summary_lines(summary):
    """The lines ais_bench prints, so log parsers written for it read this kit's output too."""
    compute = summary["NPU_compute_time"]
    return [
        "[INFO] -----------------Performance Summary------------------",
        f"[INFO] NPU_compute_time (ms): min = {compute['min']}, max = {compute['max']}, mean = {compute['mean']}, "
        f"median = {compute['median']}, percentile(99%) = {compute['percentile(99%)']}",
        f"[INFO] throughput 1000*batchsize.mean({summary['batchsize']})/NPU_compute_time.mean({compute['mean']}): "
        f"{summary['throughput']}",
        "[INFO] ------------------------------------------------------",
    ]


def default_dirname():
    return time.strftime("%Y_%m_%d-%H_%M_%S")


def _output_args(outfmt, output, output_dirname):
    """ais_bench's rules for --outfmt / --output / --output_dirname → (format, dirname)."""
    outfmt = outfmt.upper()
    if outfmt not in OUTPUT_FORMATS:
        raise KitError(f"--outfmt {outfmt!r}: choose NPY, BIN or TXT")
    if output_dirname and not output:
        raise KitError("--output_dirname needs --output, as in ais_bench")
    return outfmt, output_dirname or default_dirname()


def _run(session, files, out_dir, batchsize, outfmt, loop, warmup_count):
    """Files when given, else pure inference → (times, filesinfo, model batch, real samples, tokens per
    sample where the session trims text)."""
    if files is None:
        times, batch = run_pure(session, batchsize, loop, warmup_count, out_dir, outfmt)
        widths = token_widths(session)
        return times, {}, batch, batch * loop, max(widths) if widths else None
    times, filesinfo, batch, tokens = run_files(session, files, out_dir, batchsize, outfmt, loop, warmup_count)
    return times, filesinfo, batch, len(files), tokens


def command_line(args):
    """ais_bench's summary ``args``: the command line as a list (``sys.argv``)."""
    return list(args) if args is not None else list(sys.argv)


def infer(session, input=None, output=None, output_dirname=None, outfmt="BIN", batchsize=None, loop=1,
          warmup_count=1, args=None):
    """ais_bench end to end: returns the summary; writes outputs and ``{output}/{dirname}_summary.json``.
    ``args`` is the command line recorded in the summary (default ``sys.argv``)."""
    outfmt, dirname = _output_args(outfmt, output, output_dirname)
    start = time.perf_counter()
    files = list_input_files(input) if input else None
    out_dir = Path(output) / dirname if output else None
    times, filesinfo, batch, samples, tokens = _run(session, files, out_dir, batchsize, outfmt, loop, warmup_count)
    summary = summarise(times, batch, command_line(args), filesinfo, backend=session.name, tokens=tokens)
    summary["e2e"] = end_to_end(time.perf_counter() - start, samples)
    if output:
        write_json(Path(output) / f"{dirname}_summary.json", summary)
    print("\n".join(summary_lines(summary)))
    if tokens is not None and files is not None:
        print(f"[INFO] text length trimming: {tokens:.1f} of {max(token_widths(session))} tokens per caption on "
              "average (sorted by length; the same embeddings)")
    return summary


def infer_opened(open_session, **kwargs):
    """``infer`` on a session opened here and closed afterwards (an OM's device context is released)."""
    session = open_session()
    try:
        return infer(session, **kwargs)
    finally:
        session.close()


def split_among_devices(files, devices):
    """ais_bench's split: chunks of ceil(n / devices) files in device order, the last device the rest
    (10 files on 3 devices: 4, 4, 2)."""
    chunk = math.ceil(len(files) / len(devices))
    return [files[index * chunk:(index + 1) * chunk] for index in range(len(devices))]


def _run_on_device(job):
    """One device's part of a multi-device run, in its own process (one NPU context per process)."""
    from .sessions import open_session

    session_args, device, files, out_dir, batchsize, outfmt, loop, warmup_count = job
    session = open_session(device=device, **session_args)
    start = time.time()
    try:
        return (device,) + _run(session, files, out_dir, batchsize, outfmt, loop, warmup_count) + (start, time.time())
    finally:
        session.close()


def devices_summary_path(output, dirname):
    """The kit's own file for a multi-device run's summed figures (ais_bench writes none)."""
    return Path(output) / f"{dirname}_devices.json"


def infer_devices(session_args, devices, input=None, output=None, output_dirname=None, outfmt="BIN", batchsize=None,
                  loop=1, warmup_count=1, args=None):
    """ais_bench ``--device 0,1,…``: one process per device over its share of the inputs, outputs in
    ``output/dirname/device{N}/`` with ``output/dirname/device{N}_summary.json`` beside each, the
    ``i:… device_… throughput:…`` lines and the summed ``summary throughput``; the kit's aggregate
    goes to ``output/{dirname}_devices.json``."""
    outfmt, dirname = _output_args(outfmt, output, output_dirname)
    files = list_input_files(input) if input else None
    shares = split_among_devices(files, devices) if files else [None] * len(devices)
    root = Path(output) / dirname if output else None
    jobs = [(session_args, device, share, root / f"device{device}" if root else None, batchsize, outfmt, loop,
             warmup_count) for device, share in zip(devices, shares) if share is None or share]
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(_run_on_device, jobs)
    wall = time.perf_counter() - start
    per_device = {}
    for device, times, filesinfo, batch, _, tokens, _, _ in results:
        per_device[str(device)] = summarise(times, batch, command_line(args), filesinfo, "ascend", tokens)
        print("\n".join(summary_lines(per_device[str(device)])))
        if root:
            write_json(root / f"device{device}_summary.json", per_device[str(device)])
    for index, (device, *_, begin, end) in enumerate(results):
        print(f"i:{index} device_{device} throughput:{per_device[str(device)]['throughput']} start_time:{begin} "
              f"end_time:{end}")
    total = sum(summary["throughput"] for summary in per_device.values())
    print(f"[INFO] summary throughput:{total}")
    every_time = [t for _, times, *_ in results for t in times]
    summary = {"throughput": total, "batchsize": results[0][3], "devices": per_device, "args": command_line(args),
               "latency_ms": latency_percentiles(every_time), "spread": spread(every_time),
               "e2e": end_to_end(wall, sum(result[4] for result in results))}
    if output:
        write_json(devices_summary_path(output, dirname), summary)
    return summary


def batches_of(inputs, batch_size):
    """``inputs`` in batches of ``batch_size`` (the last may be smaller), each contiguous."""
    return [np.ascontiguousarray(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]


def embed_all(run, inputs, batch_size):
    """``run`` over ``inputs`` in batches, the outputs concatenated."""
    return np.concatenate([run(batch) for batch in batches_of(inputs, batch_size)])


def padded_batches(inputs, size):
    """(batch, samples in it) for ``inputs`` in batches of exactly ``size``, the last padded with its first
    sample as ais_bench pads a static-batch OM's input."""
    for start in range(0, len(inputs), size):
        batch = inputs[start:start + size]
        yield np.concatenate([batch] + [batch[:1]] * (size - len(batch))), len(batch)

"""Where the time goes on the NPU (``PROFILE=1``): the pure-inference run under ``msprof``, its op
statistics as a time share per op type, the ops that ran on the AI CPU, and the achieved TFLOP/s.

``msprof --output=DIR --task-time=on --aicpu=on --application="python3 -m ais_bench --model X.om --loop N
--batchsize B"`` writes one collection, ``DIR/PROF_*``, whose summaries are ``op_statistic_*.csv``
(``Device_id, OP Type, Core Type, Count, Total Time(us), Min Time(us), Avg Time(us), Max Time(us), Ratio(%)``)
and ``op_summary_*.csv`` (one row per task: ``Op Name, OP Type, Task Type, Task Duration(us)``, …). Where
they are depends on the CANN version (msprof-analyze's ``profiling_data_version_config.yaml``):
``PROF_*/mindstudio_profiler_output/op_summary_{ts}.csv`` (8.0), ``PROF_*/device_N/summary/`` with
``op_summary_{dev}_{model}_{ts}.csv`` (7.0.0), one ``…_{dev}_{model}_{iter}_{ts}.csv`` per iteration (7.0.RC1)
or ``…_{dev}_{model}.csv`` (6.3.RC2); a summary above 1,000,000 rows is split into ``…_slice_{N}_…`` files.
Every part of the collection is read: op_statistic rows combine (counts and total times add, min/max
combine, average and share recomputed), op_summary rows concatenate.

``--task-time`` is passed explicitly because its default differs between CANN's option page (on, i.e. l1)
and msprof's own documentation (l0, under which no op_statistic is written); ``--aicpu=on`` as ais_bench's
own msprof wrapper passes it. Achieved TFLOP/s is the model's FLOP per sample (counted by torch on
open_clip's forward) × the fps step 6 measured — the NPU twin of the CPU roofline figure.
"""

import csv
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..files import KitError, natural_key

AI_CPU = "AI_CPU"
MSPROF_OPTIONS = ["--task-time=on", "--aicpu=on"]  # what op_statistic / op_summary need, whatever the default
SUMMARY_PART = r"(_(slice_)?\d+)+\.csv"  # {table}_{ts}, _{dev}_{model}[_{iter}][_{ts}], _slice_{N}_{ts}


def flops_per_sample(model, tower, module=None):
    """FLOP of one sample of ``tower`` through ``module`` (default: open_clip's forward) — matrix products
    and convolutions, as torch's FlopCounterMode counts them — on plain attention, so no fused kernel hides
    its products."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..model.export import plain_attention
    from ..model.towers import example_inputs, tower_module

    module = module or tower_module(model, tower)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), plain_attention(model):  # torch 2.1 counts nothing under inference_mode
        module(torch.from_numpy(example_inputs(model, tower, 1)))
    return counter.get_total_flops()


def msprof_command(out_dir, om, batch, loops, dym_batch=False):
    """``dym_batch``: the OM is a dynamic-batch one, run at gear ``batch``."""
    application = shlex.join([sys.executable, "-m", "ais_bench", "--model", str(om), "--loop", str(loops),
                              "--batchsize", str(batch)] + (["--dymBatch", str(batch)] if dym_batch else []))
    return ["msprof", f"--output={out_dir}", *MSPROF_OPTIONS, f"--application={application}"]


def summary_parts(collection, table):
    """Every ``{table}`` CSV of one msprof collection (a ``PROF_*`` folder): all slices and iterations, from
    ``mindstudio_profiler_output`` where CANN 8 writes it, else from each ``device_*/summary``."""
    collection = Path(collection)
    merged = collection / "mindstudio_profiler_output"
    folders = [merged] if merged.is_dir() else sorted(collection.glob("device_*/summary"))
    pattern = re.compile(re.escape(table) + SUMMARY_PART)
    return sorted((path for folder in folders for path in folder.glob(f"{table}_*.csv") if pattern.fullmatch(path.name)),
                  key=lambda path: natural_key(path.name))


def read_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in csv.DictReader(handle)]


def read_table(collections, table, log):
    """The rows of ``table`` over every part of ``collections``; none at all is a one-line KitError."""
    parts = [path for collection in collections for path in summary_parts(collection, table)]
    if not parts:
        hint = " (msprof writes it only when --task-time is on/l1)" if table == "op_statistic" else ""
        raise KitError(f"{', '.join(str(c) for c in collections)}: msprof wrote no {table}_*.csv{hint}; see {log}")
    return [row for path in parts for row in read_csv(path)]


def op_shares(statistic_rows):
    """op_statistic rows of every part → one row per (op type, core type): counts and total times add,
    min/max combine, the average is total / count and the share is over the whole run; by total time."""
    combined = {}
    for row in statistic_rows:
        count, total = int(float(row["Count"])), float(row["Total Time(us)"])
        low, high = float(row["Min Time(us)"]), float(row["Max Time(us)"])
        entry = combined.setdefault((row["OP Type"], row["Core Type"]), {
            "op_type": row["OP Type"], "core_type": row["Core Type"], "count": 0, "total_us": 0.0, "min_us": low,
            "max_us": high})
        entry["count"] += count
        entry["total_us"] += total
        entry["min_us"], entry["max_us"] = min(entry["min_us"], low), max(entry["max_us"], high)
    rows = list(combined.values())
    grand = sum(r["total_us"] for r in rows) or 1.0
    for row in rows:
        row["avg_us"] = row["total_us"] / row["count"] if row["count"] else 0.0
        row["share"] = row["total_us"] / grand
    return sorted(rows, key=lambda r: -r["total_us"])


def ai_cpu_ops(summary_rows):
    """Names of the ops that ran as AI CPU tasks (each once)."""
    return sorted({row["Op Name"] for row in summary_rows if row.get("Task Type") == AI_CPU})


def profile_om(om, batch, loops, out_dir, fps, flop, dym_batch=False):
    """Run ``om`` under msprof and read the collection it wrote; returns the record report.md shows."""
    if shutil.which("msprof") is None:
        raise KitError("PROFILE=1: msprof not found on PATH; source the CANN environment "
                       "(`source /usr/local/Ascend/ascend-toolkit/set_env.sh`)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = set(out_dir.glob("PROF_*"))
    command = msprof_command(out_dir, om, batch, loops, dym_batch)
    log = out_dir / "msprof.log"
    with open(log, "w", encoding="utf-8") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise KitError(f"msprof failed (exit {result.returncode}) for {om}; see {log}")
    collections = sorted(path for path in out_dir.glob("PROF_*") if path.is_dir() and path not in earlier)
    if not collections:
        raise KitError(f"{out_dir}: msprof wrote no PROF_* folder for {om}; see {log}")
    shares = op_shares(read_table(collections, "op_statistic", log))
    on_cpu = ai_cpu_ops(read_table(collections, "op_summary", log))
    return {"om": str(om), "batch_size": batch, "command": shlex.join(command), "ops": shares, "ai_cpu_ops": on_cpu,
            "fps": fps, "flop_per_sample": flop, "achieved_tflops": flop * fps / 1e12}

"""Where the time goes on the NPU (``PROFILE=1``): the pure-inference run under ``msprof``, its op
statistics as a time share per op type, the ops that ran on the AI CPU, and the achieved TFLOP/s.

``msprof --output=DIR --application="python3 -m ais_bench --model X.om --loop N --batchsize B"`` writes
``DIR/PROF_*/mindstudio_profiler_output/`` (older CANN: ``PROF_*/device_*/summary/``) with
``op_statistic_*.csv`` (``Device_id, OP Type, Core Type, Count, Total Time(us), Min Time(us), Avg Time(us),
Max Time(us), Ratio(%)``) and ``op_summary_*.csv`` (one row per task: ``Op Name, OP Type, Task Type,
Task Duration(us)``, …). Achieved TFLOP/s is the model's FLOP per sample (counted by torch on open_clip's
forward) × the fps step 6 measured — the NPU twin of the CPU roofline figure.
"""

import csv
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from .files import KitError

AI_CPU = "AI_CPU"


def flops_per_sample(model, tower, module=None):
    """FLOP of one sample of ``tower`` through ``module`` (default: open_clip's forward) — matrix products
    and convolutions, as torch's FlopCounterMode counts them — on plain attention, so no fused kernel hides
    its products."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .export import plain_attention
    from .towers import example_inputs, tower_module

    module = module or tower_module(model, tower)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), plain_attention(model):  # torch 2.1 counts nothing under inference_mode
        module(torch.from_numpy(example_inputs(model, tower, 1)))
    return counter.get_total_flops()


def msprof_command(out_dir, om, batch, loops, dym_batch=False):
    """``dym_batch``: the OM is a dynamic-batch one, run at gear ``batch``."""
    application = shlex.join([sys.executable, "-m", "ais_bench", "--model", str(om), "--loop", str(loops),
                              "--batchsize", str(batch)] + (["--dymBatch", str(batch)] if dym_batch else []))
    return ["msprof", f"--output={out_dir}", f"--application={application}"]


def newest_csv(out_dir, name):
    found = sorted(Path(out_dir).rglob(f"{name}_*.csv"), key=lambda path: path.stat().st_mtime)
    if not found:
        raise KitError(f"{out_dir}: msprof wrote no {name}_*.csv; see {Path(out_dir) / 'msprof.log'}")
    return found[-1]


def read_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{key.strip(): (value or "").strip() for key, value in row.items() if key} for row in csv.DictReader(handle)]


def op_shares(statistic_rows):
    """[{op_type, core_type, count, total_us, share}] by total time, the share over the whole run."""
    rows = [{"op_type": r["OP Type"], "core_type": r["Core Type"], "count": int(float(r["Count"])),
             "total_us": float(r["Total Time(us)"])} for r in statistic_rows]
    total = sum(r["total_us"] for r in rows) or 1.0
    for row in rows:
        row["share"] = row["total_us"] / total
    return sorted(rows, key=lambda r: -r["total_us"])


def ai_cpu_ops(summary_rows):
    """Names of the ops that ran as AI CPU tasks (each once)."""
    return sorted({row["Op Name"] for row in summary_rows if row.get("Task Type") == AI_CPU})


def profile_om(om, batch, loops, out_dir, fps, flop, dym_batch=False):
    """Run ``om`` under msprof and read what it wrote; returns the record report.md shows."""
    if shutil.which("msprof") is None:
        raise KitError("PROFILE=1: msprof not found on PATH; source the CANN environment "
                       "(`source /usr/local/Ascend/ascend-toolkit/set_env.sh`)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = msprof_command(out_dir, om, batch, loops, dym_batch)
    with open(out_dir / "msprof.log", "w", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise KitError(f"msprof failed (exit {result.returncode}) for {om}; see {out_dir / 'msprof.log'}")
    shares = op_shares(read_csv(newest_csv(out_dir, "op_statistic")))
    on_cpu = ai_cpu_ops(read_csv(newest_csv(out_dir, "op_summary")))
    return {"om": str(om), "batch_size": batch, "command": shlex.join(command), "ops": shares, "ai_cpu_ops": on_cpu,
            "fps": fps, "flop_per_sample": flop, "achieved_tflops": flop * fps / 1e12}


def profile_section(records, peak_tflops=None):
    """report.md's lines for the profiles."""
    from .tables import markdown_table

    lines = ["## Where the time goes on the NPU (msprof)", ""]
    for tower, record in records.items():
        rows = [[r["op_type"], r["core_type"] + (" ⚠" if r["core_type"] == AI_CPU else ""), r["count"],
                 f"{r['total_us']:.1f}", f"{r['share']:.1%}"] for r in record["ops"][:15]]
        peak = f" of the {peak_tflops:g} TFLOP/s peak given ({record['achieved_tflops'] / peak_tflops:.1%})" \
            if peak_tflops else " (set PEAK_TFLOPS to the chip's fp16 peak to compare)"
        lines += [f"### {tower}, batch {record['batch_size']}", "",
                  markdown_table(["op type", "core", "count", "total µs", "share"], rows), "",
                  f"Achieved {record['achieved_tflops']:.2f} TFLOP/s ({record['flop_per_sample'] / 1e9:.2f} GFLOP per "
                  f"sample × {record['fps']:.1f} fps){peak}."]
        if record["ai_cpu_ops"]:
            lines += [f"On the AI CPU (slow path): {', '.join(f'`{name}`' for name in record['ai_cpu_ops'][:10])}."]
        lines += [f"Command: `{record['command']}`", ""]
    return lines

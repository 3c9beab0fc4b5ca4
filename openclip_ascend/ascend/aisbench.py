"""Pass-through to the real ``python3 -m ais_bench`` command line: build its arguments, read its
throughput line (every wording versions have printed) and its summary JSON."""

import json
import re
import subprocess
import sys
from pathlib import Path

from ..files import KitError

THROUGHPUT_LINE = re.compile(r"throughput\s+1000\*batchsize(?:\.mean)?\(([\d.]+)\)\s*/\s*"
                             r"NPU_compute_time\.mean\(([\d.]+)\)\s*:\s*([\d.]+(?:[eE][-+]?\d+)?)", re.IGNORECASE)
SUMMARY_THROUGHPUT = re.compile(r"summary throughput\s*:\s*([\d.]+(?:[eE][-+]?\d+)?)", re.IGNORECASE)


def parse_throughput(text):
    """All throughput figures in ais_bench output: [{"batchsize", "compute_ms", "throughput"}] and the
    multi-device ``summary throughput`` (None when absent)."""
    lines = [{"batchsize": float(m.group(1)), "compute_ms": float(m.group(2)), "throughput": float(m.group(3))}
             for m in THROUGHPUT_LINE.finditer(text)]
    total = SUMMARY_THROUGHPUT.search(text)
    return lines, float(total.group(1)) if total else None


def command(model, **flags):
    """``python3 -m ais_bench --model M`` with exactly the flags given (None or "" left out): the tool's
    own defaults apply to the rest, as when a user types it."""
    cmd = [sys.executable, "-m", "ais_bench", "--model", str(model)]
    for name, value in flags.items():
        if value not in (None, ""):
            cmd += [f"--{name}", str(value)]
    return cmd


def summary_paths(output, output_dirname, devices):
    """Where ais_bench leaves its summaries: ``O/D_summary.json``, or one ``O/D/device{N}_summary.json``
    per device of a multi-device run."""
    if len(devices) > 1:
        return [Path(output) / output_dirname / f"device{device}_summary.json" for device in devices]
    return [Path(output) / f"{output_dirname}_summary.json"]


def run(cmd, output=None, output_dirname=None, devices=(0,)):
    """Run ais_bench, echo its output, return {"throughput", "lines", "summaries"} parsed from it."""
    result = subprocess.run(cmd, capture_output=True, text=True)
    text = result.stdout + result.stderr  # some versions log to stderr
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        raise KitError(f"ais_bench failed (exit {result.returncode}) for {cmd[cmd.index('--model') + 1]}: {tail}")
    lines, total = parse_throughput(text)
    if not lines and total is None:
        raise KitError("ais_bench printed no throughput line; run it by hand to see why: " + " ".join(cmd))
    summaries = {}
    if output and output_dirname:
        for device, path in zip(devices, summary_paths(output, output_dirname, devices)):
            if path.is_file():
                summaries[str(device)] = json.loads(path.read_text(encoding="utf-8"))
    return {"throughput": total if total is not None else lines[-1]["throughput"], "lines": lines,
            "summaries": summaries}

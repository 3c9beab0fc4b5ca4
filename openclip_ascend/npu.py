"""Which Ascend chip is here: ``npu-smi info`` parsed into chips and an atc ``--soc_version``.

In each two-row block of the table the first row is the chip row: ``| <NPU id> <Name> | <Health> | …``;
the second row (chip / device / Bus-Id) and the header, version and process-table rows are skipped.
soc_version is ``"Ascend" + Name``. On A3 machines Name reads ``Ascend910``, which is not a soc
version (theirs look like ``Ascend910_9391``): detection refuses to guess there.
"""

import re
import shutil
import subprocess
from dataclasses import dataclass

from .files import KitError

SOC_HINT = "pass --soc-version (e.g. Ascend910B4, Ascend310P3; `npu-smi info -t board -i 0` shows the chip)"


@dataclass(frozen=True)
class Chip:
    npu_id: int
    name: str
    health: str

    @property
    def soc_version(self):
        return f"Ascend{self.name}"


def parse_npu_smi(text):
    """Chips listed by ``npu-smi info``, in table order."""
    chips = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if "Process id" in line:
            break  # the process table follows the chip table
        first = cells[0].split()
        if len(cells) < 3 or len(first) != 2 or not first[0].isdigit() or first[1].isdigit():
            continue  # header, version, chip/bus-id and process rows
        if re.fullmatch(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.\d", cells[1]):
            continue
        chips.append(Chip(npu_id=int(first[0]), name=first[1], health=cells[1].split()[0] if cells[1] else ""))
    return chips


def soc_version_of(chips, source="npu-smi info"):
    if not chips:
        raise KitError(f"{source}: no NPU chip rows found; {SOC_HINT}")
    names = sorted({chip.name for chip in chips})
    if len(names) > 1:
        raise KitError(f"{source}: chips of several kinds ({', '.join(names)}); {SOC_HINT}")
    name = names[0]
    if name.lower().startswith("ascend"):
        raise KitError(f"{source}: the chip Name is {name!r}, which is not a soc version on this (A3-type) "
                       f"machine; {SOC_HINT} — A3 soc versions look like Ascend910_9391")
    return chips[0].soc_version


def read_npu_smi():
    if shutil.which("npu-smi") is None:
        raise KitError(f"npu-smi not found on PATH, so the chip cannot be detected; {SOC_HINT}")
    result = subprocess.run(["npu-smi", "info"], capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr or result.stdout).strip().splitlines()[:1]
        raise KitError(f"npu-smi info failed (exit {result.returncode}: {first[0] if first else 'no output'}); "
                       f"{SOC_HINT}")
    return result.stdout


def detect_soc_version(override=None):
    """``override`` if given, else the soc version of the chips ``npu-smi info`` reports.

    Returns (soc_version, chips, warnings) — warnings name chips whose Health is not OK.
    """
    if override:
        return override, [], []
    chips = parse_npu_smi(read_npu_smi())
    soc = soc_version_of(chips)
    warnings = [f"NPU {chip.npu_id} ({chip.name}) reports Health {chip.health}" for chip in chips
                if chip.health.upper() != "OK"]
    return soc, chips, warnings

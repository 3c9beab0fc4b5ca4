"""Which Ascend chip is here: ``npu-smi info`` parsed into chips and an atc ``--soc_version``.

In each two-row block of the table the first row is the chip row: ``| <NPU id> <Name> | <Health> | …``;
the second row (chip / device / Bus-Id) and the header, version and process-table rows are skipped.
soc_version is ``"Ascend" + Name``. On A3 machines Name reads ``Ascend910``, which is not a soc
version (theirs look like ``Ascend910_9391``): detection refuses to guess there.
"""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..files import KitError


def cann_version(home):
    """The CANN toolkit version as the install records it (``Version=`` in a package's version.info, or the
    toolkit's ``ascend_toolkit_install.info``) → (version, the file it came from), or (None, None)."""
    home = Path(home)
    candidates = [home / "compiler" / "version.info", home / "runtime" / "version.info"]
    candidates += sorted(home.glob("*-linux/ascend_toolkit_install.info"))
    for path in candidates:
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                key, sep, value = line.partition("=")
                if sep and key.strip().lower() == "version" and value.strip():
                    return value.strip(), path
    return None, None


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


BUSY_AICORE_PERCENT = 5  # an idle chip reads 0; a figure taken while another job computes is not the model's


@dataclass
class DeviceState:
    """What ``npu-smi info`` says one device is doing: its AI Core usage and the processes on it."""

    device: int
    npu_id: int
    chip: int
    aicore_percent: int = None
    processes: list = field(default_factory=list)  # [{"pid", "name", "memory_mb"}]

    def busy_reasons(self, own_pid=None):
        reasons = []
        others = [p for p in self.processes if p["pid"] != own_pid]
        if others:
            reasons.append("running " + ", ".join(f"{p['name']} (pid {p['pid']}, {p['memory_mb']} MB)" for p in others))
        if self.aicore_percent is not None and self.aicore_percent >= BUSY_AICORE_PERCENT:
            reasons.append(f"AI Core {self.aicore_percent}% busy")
        return reasons


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_device_states(text):
    """{device id: DeviceState} from ``npu-smi info``: the second row of each chip block gives the chip,
    the logical device (310P lists it; 910B uses the NPU id) and AICore(%); the process table follows."""
    states, by_chip, pending, in_processes = {}, {}, None, False
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            continue
        cells = _cells(line)
        if "Process id" in line:
            in_processes = True
            continue
        first = cells[0].split()
        if in_processes:
            if len(cells) >= 4 and len(first) == 2 and all(part.isdigit() for part in first) and cells[1].isdigit():
                state = by_chip.get((int(first[0]), int(first[1])))
                if state is not None:
                    memory = cells[3].split()[0] if cells[3] else ""
                    state.processes.append({"pid": int(cells[1]), "name": cells[2],
                                            "memory_mb": int(memory) if memory.isdigit() else None})
            continue
        if len(cells) >= 3 and len(first) == 2 and first[0].isdigit() and not first[1].isdigit():
            pending = int(first[0])  # chip row: NPU id and Name
            continue
        if pending is not None and len(cells) >= 3 and first and all(part.isdigit() for part in first):
            chip = int(first[0])
            device = int(first[1]) if len(first) > 1 else pending
            usage = cells[2].split()
            state = DeviceState(device=device, npu_id=pending, chip=chip,
                                aicore_percent=int(usage[0]) if usage and usage[0].isdigit() else None)
            states[device] = by_chip[(pending, chip)] = state
            pending = None
    return states


def idle_check(devices, require_idle=False, text=None):
    """Read ``npu-smi info`` before a throughput run: returns ({device: reading}, warnings). A busy
    device (another process, or AI Core in use) makes the figures unreliable: a warning, or with
    ``require_idle`` a KitError. Without npu-smi nothing can be checked, which is said too."""
    if text is None:
        try:
            text = read_npu_smi()
        except KitError as exc:
            if require_idle:
                raise
            return {}, [f"cannot check that the NPU is idle: {exc}"]
    states = parse_device_states(text)
    readings, warnings = {}, []
    for device in devices:
        state = states.get(int(device))
        if state is None:
            message = f"npu-smi info lists no device {device}"
            if require_idle:
                raise KitError(f"--device {device}: {message}; pass the ids ais_bench's --device takes")
            warnings.append(message)
            continue
        reasons = state.busy_reasons(own_pid=os.getpid())
        readings[str(device)] = {"aicore_percent": state.aicore_percent, "processes": state.processes,
                                 "busy": bool(reasons)}
        if reasons:
            message = (f"NPU device {device} is busy ({'; '.join(reasons)}): throughput measured now is not the "
                       "model's alone")
            if require_idle:
                raise KitError(f"{message}; wait until it is idle, or drop --require-idle")
            warnings.append(message)
    return readings, warnings

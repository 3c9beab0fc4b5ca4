"""``openclip-ascend doctor``: will a run work on this machine, and on which path — answered in about a
minute, before an hour-long run finds out.

It reads the environment (Python, the kit's requirements against their supported ranges, CANN's
``set_env.sh`` variables and version, atc, ais_bench and aclruntime as importable by *this* Python,
npu-smi's chips, msprof, free disk, whether the weights resolve, the data folder's layout) and runs a
smoke test: the bundled tiny model → ONNX (checked against PyTorch: the CPU path) and, where the Ascend
tools are, → atc at batch 1 for each tower → InferSession → embeddings against ONNX Runtime fp32.

The path is the NPU where ``npu-smi`` is (as ``BACKEND=auto`` decides), else the CPU fallback;
``--require-npu`` demands the NPU. A check that the chosen path needs and lacks is a failure; one that
only the other path needs is a warning that says why that path is not available here.
"""

import importlib
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import KitError, write_json, write_text

OK, WARN, FAIL = "ok", "warn", "fail"
SMOKE_MIN_COSINE = 0.99  # an fp16 OM of the tiny model stays far above it; a broken toolchain gives garbage
LOW_DISK_GB, NO_DISK_GB = 20, 2  # a ViT-B-32 flickr30k run: ~1 GB of arrays, ~1 GB of ONNX, ~3 GB of OMs
CANN_ROOT = Path("/usr/local/Ascend/ascend-toolkit")


@dataclass
class Check:
    check: str
    status: str
    found: str
    advice: str = ""


def _npu_status(npu_path):
    """What a missing NPU piece is: a failure on the NPU path, a warning (why there is none) on the CPU path."""
    return FAIL if npu_path else WARN


# --- environment --------------------------------------------------------------------------------

def python_checks():
    from . import __version__
    from .stack import REQUIREMENTS, fits, installed

    version = platform.python_version()
    checks = [Check("python", OK if sys.version_info >= (3, 9) else FAIL, f"{version} ({sys.executable})",
                    "" if sys.version_info >= (3, 9) else "use Python 3.9 or newer"),
              Check("openclip-ascend", OK, f"{__version__} ({Path(__file__).resolve().parent})")]
    for name, spec in REQUIREMENTS.items():
        have = installed(name)
        floor = spec.split(",")[0]
        if have is None:
            checks.append(Check(name, FAIL, "not installed", f"{sys.executable} -m pip install -r requirements.txt"))
        elif not fits(have, floor):
            checks.append(Check(name, FAIL, f"{have}, outside {spec}", f"pip install '{name}{spec}'"))
        elif not fits(have, spec):
            checks.append(Check(name, WARN, f"{have}, newer than the newest tested ({spec})",
                                "if a step misbehaves, try the tested range"))
        else:
            checks.append(Check(name, OK, f"{have} (supported: {spec})"))
    return checks


def cann_checks(npu_path):
    home = os.environ.get("ASCEND_TOOLKIT_HOME") or os.environ.get("ASCEND_HOME_PATH")
    status = _npu_status(npu_path)
    if not home:
        set_env = next((p for p in (CANN_ROOT / "set_env.sh", CANN_ROOT / "latest" / "bin" / "setenv.bash")
                        if p.is_file()), None)
        if set_env:
            return [Check("CANN environment", status, f"installed ({set_env}) but not sourced in this shell",
                          f"source {set_env}")]
        return [Check("CANN environment", status, "no ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH, no CANN under "
                      f"{CANN_ROOT}", "install the CANN toolkit and source its set_env.sh (NPU path only)")]
    home = Path(home)
    libraries = os.environ.get("LD_LIBRARY_PATH", "")
    checks = [Check("CANN environment", OK if str(home) in libraries else status,
                    f"ASCEND_TOOLKIT_HOME={home}" + ("" if str(home) in libraries else
                                                    "; LD_LIBRARY_PATH lacks its libraries"),
                    "" if str(home) in libraries else f"source {home.parent / 'set_env.sh'} in this shell")]
    from .ascend.npu_smi import cann_version

    version, source = cann_version(home)
    checks.append(Check("CANN version", OK if version else WARN, f"{version} ({source})" if version else
                        f"no version.info under {home}", "" if version else "check the toolkit install"))
    return checks


def _import_check(name, module, npu_path):
    """Whether ``module`` imports in this Python, and the version its distribution records."""
    from .run.sessions import AIS_BENCH_INSTALL, distributions_providing
    from .stack import installed

    status = _npu_status(npu_path)
    if name == "ais_bench" and "ais-bench-benchmark" in distributions_providing("ais_bench"):
        return Check(name, status, "PyPI's ais-bench-benchmark (an unrelated LLM-evaluation tool) is what is installed",
                     f"pip uninstall ais-bench-benchmark, then {AIS_BENCH_INSTALL}")
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a back end failing to load CANN's libraries
        detail = " ".join(str(exc).split())[:160]
        return Check(name, status, f"not importable by {sys.executable} ({detail})",
                     f"{AIS_BENCH_INSTALL}, into this Python (or run with the Python that has them)")
    return Check(name, OK, f"{installed(name) or 'version not recorded'} (importable by {sys.executable})")


def tool_checks(npu_path):
    status = _npu_status(npu_path)
    atc = shutil.which("atc")
    checks = [Check("atc", OK, atc) if atc else
              Check("atc", status, "not on PATH", "source CANN's set_env.sh (it puts atc on PATH)"),
              _import_check("ais_bench", "ais_bench.infer.interface", npu_path),
              _import_check("aclruntime", "aclruntime", npu_path)]
    msprof = shutil.which("msprof")
    checks.append(Check("msprof", OK, msprof) if msprof else
                  Check("msprof", WARN, "not on PATH", "needed only for PROFILE=1; it comes with CANN's toolkit"))
    return checks


def npu_checks(npu_path, soc_override=None):
    """npu-smi's chips, their health and soc version, and whether a device is busy → (checks, soc version)."""
    from .ascend.npu_smi import idle_check, parse_device_states, parse_npu_smi, read_npu_smi, soc_version_of

    status = _npu_status(npu_path)
    try:
        text = read_npu_smi()
    except KitError as exc:
        checks = [Check("npu-smi", status, str(exc).split(";")[0], "install the NPU driver (npu-smi comes with it)")]
        if soc_override:
            checks.append(Check("soc version", OK, f"{soc_override} (given)"))
        return checks, soc_override
    chips = parse_npu_smi(text)
    names = ", ".join(f"NPU {chip.npu_id} {chip.name} ({chip.health})" for chip in chips) or "no chip rows"
    unhealthy = [chip for chip in chips if chip.health.upper() != "OK"]
    checks = [Check("npu-smi", WARN if unhealthy else (OK if chips else status), names,
                    "check the card's alarms (npu-smi info -t health -i N)" if unhealthy else "")]
    soc = soc_override
    if soc:
        checks.append(Check("soc version", OK, f"{soc} (given)"))
    else:
        try:
            soc = soc_version_of(chips)
            checks.append(Check("soc version", OK, f"{soc} (from npu-smi info)"))
        except KitError as exc:
            checks.append(Check("soc version", status, str(exc).split(";")[0], "pass --soc-version (SOC_VERSION)"))
    devices = sorted(parse_device_states(text))
    _, busy = idle_check(devices, text=text) if devices else ({}, [])
    checks.append(Check("NPU idle", WARN if busy else OK, "; ".join(busy) if busy else
                        f"devices {', '.join(map(str, devices)) or 'none listed'} idle",
                        "wait for the other job before timing (REQUIRE_IDLE=1 makes it an error)" if busy else ""))
    return checks, soc


def disk_check(output_dir):
    folder = Path(output_dir).resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**30
    status = FAIL if free < NO_DISK_GB else WARN if free < LOW_DISK_GB else OK
    return Check("free disk", status, f"{free:.1f} GiB free at {folder}",
                 "" if status == OK else "a ViT-B-32 flickr30k run writes about 5 GB; free space or choose "
                                         "another --output-dir (OUT)")


def weights_check(model_name, pretrained, explicit):
    """Whether --pretrained resolves: a file, already cached, or downloadable now (a HEAD request to the
    hub or the HF_ENDPOINT mirror, as the download's first request)."""
    from .model.loading import hub_offline, locate_weights

    label, name = "weights", f"{model_name}/{pretrained}: "
    try:
        weights = locate_weights(model_name, pretrained)
    except KitError as exc:
        return Check(label, FAIL if explicit else WARN, name + str(exc).split(";")[0],
                     "pass a checkpoint file or a known tag")
    if weights.source in ("file", "cache"):
        return Check(label, OK, name + f"{'local file' if weights.source == 'file' else 'cached'}: {weights.path}")
    if weights.source == "random":
        return Check(label, WARN, name + "random weights (--pretrained none)",
                     "no accuracy figure means anything with them")
    status = FAIL if explicit else WARN
    fetch = f"fetch {weights.url} and pass --pretrained /path/to/it"
    if hub_offline():
        return Check(label, status, name + "not cached, and HF_HUB_OFFLINE=1 forbids the download",
                     f"{fetch}, or unset HF_HUB_OFFLINE")
    try:
        from huggingface_hub import get_hf_file_metadata

        size = get_hf_file_metadata(weights.url, timeout=10).size
    except Exception as exc:  # every network and hub error: said, not raised
        detail = " ".join(str(exc).split())[:160]
        return Check(label, status, name + f"not cached and {weights.url} not reachable ({detail})",
                     f"point HF_ENDPOINT at a mirror (e.g. https://hf-mirror.com), or {fetch}")
    return Check(label, OK, name + f"not cached; downloadable from {weights.url}"
                 + (f" ({size / 2**20:.0f} MB)" if size else ""), "a run downloads it before step 1")


def data_check(data_dir, dataset, task):
    """The data folder read as step 1 reads it: counts, missing images, lines it would skip."""
    from .data.dataset import Problems, read_dataset

    data_dir = Path(data_dir)
    try:
        if task == "zeroshot":
            from .evaluate.zeroshot import load_set

            data = load_set(data_dir)
            return Check("data", OK, f"{data_dir}: {len(data.files)} images in {len(data.classnames)} class folders")
        problems = Problems("skip")
        manifest = read_dataset(data_dir, dataset, problems)
    except KitError as exc:
        return Check("data", FAIL, str(exc), "fix the folder (see README: When something goes wrong)")
    missing = [name for name in manifest.images if not (data_dir / name).is_file()]
    found = (f"{data_dir} ({dataset}): {len(manifest.images)} images, {len(manifest.captions)} captions"
             + (f"; {len(missing)} images missing (first: {missing[0]})" if missing else "")
             + (f"; {len(problems.skipped)} annotation lines unreadable (first: {problems.skipped[0]['item']})"
                if problems.skipped else ""))
    bad = missing or problems.skipped
    return Check("data", FAIL if not manifest.images else (WARN if bad else OK), found,
                 "fetch the missing images, or run with ON_ERROR=skip (recall is then over the kept set)" if bad else "")


# --- smoke test ---------------------------------------------------------------------------------

class Stopwatch:
    def __init__(self):
        self.seconds = {}

    def time(self, stage, call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            self.seconds[stage] = round(time.perf_counter() - start, 2)


def smoke(out_dir, soc, npu):
    """The bundled tiny model through the toolchain: ONNX checked against PyTorch (the CPU path) and, with
    ``npu``, an OM per tower at batch 1 run through InferSession against ONNX Runtime fp32 → (checks,
    record with the seconds each stage took). The atc logs stay in ``out_dir/smoke``."""
    from .model.export import export_model, onnx_path
    from .model.loading import TINY_MODEL, TINY_WEIGHTS, load_model
    from .model.towers import example_inputs

    watch, folder = Stopwatch(), Path(out_dir) / "smoke"
    prefix = folder / "tiny"
    record = {"folder": str(folder), "seconds": watch.seconds}
    try:
        model = watch.time("load tiny model", load_model, TINY_MODEL, str(TINY_WEIGHTS))
        exported = watch.time("export ONNX + parity", export_model, model, prefix)
    except KitError as exc:
        return [Check("smoke: CPU path", FAIL, f"tiny model → ONNX failed: {exc}", "see the message")], record
    worst = max(entry["parity"][batch]["max_abs_diff"] for entry in exported.values() for batch in entry["parity"])
    checks = [Check("smoke: CPU path", OK, f"tiny model → ONNX → ONNX Runtime equals PyTorch (max abs diff "
                    f"{worst:.1e}) in {sum(watch.seconds.values()):.1f} s")]
    record["cpu_max_abs_diff"] = worst
    if not npu:
        return checks, record
    if not soc:
        return checks + [Check("smoke: NPU path", FAIL, "no soc version", "pass --soc-version")], record
    from .agreement import compare_embeddings, cosine_text
    from .ascend.atc import plan_jobs, run_jobs
    from .run.sessions import AscendSession, OnnxRuntimeSession

    jobs = plan_jobs(prefix, ["vision", "text"], [1], soc)
    for job in jobs:
        watch.time(f"atc {job.tower} bs1", run_jobs, [job], 1, True)
    failed = [job for job in jobs if job.status != "ok"]
    record["atc"] = [{"tower": job.tower, "status": job.status, "log": str(job.log), "error": job.error} for job in jobs]
    if failed:
        return checks + [Check("smoke: atc", FAIL, f"{failed[0].tower}: {failed[0].error}",
                               f"read {failed[0].log} (kept with doctor.json)")], record
    agreement = {}
    for job in jobs:
        inputs = example_inputs(model, job.tower, 4, seed=1)
        reference = OnnxRuntimeSession(onnx_path(prefix, job.tower)).run(inputs)
        try:
            session = watch.time(f"load {job.tower} OM", AscendSession, job.om)
        except KitError as exc:
            return checks + [Check("smoke: InferSession", FAIL, str(exc), "check the driver, CANN and aclruntime "
                                   "versions belong together")], record
        try:
            embeddings = watch.time(f"infer {job.tower}", lambda s=session, x=inputs: [s.run(x[i:i + 1])[0]
                                                                                    for i in range(len(x))])
        finally:
            session.close()
        agreement[job.tower] = compare_embeddings(reference, embeddings)
    record["agreement"] = agreement
    worst_cosine = min(entry["min_cosine"] for entry in agreement.values())
    ok = worst_cosine >= SMOKE_MIN_COSINE
    found = "; ".join(f"{tower} min cosine {cosine_text(entry['min_cosine'])}, max abs diff {entry['max_abs_diff']:.1e}"
                      for tower, entry in agreement.items())
    return checks + [Check("smoke: NPU path", OK if ok else FAIL,
                           f"tiny model OMs ({soc}, batch 1) against ONNX Runtime fp32: {found}",
                           "" if ok else f"cosine below {SMOKE_MIN_COSINE}: the toolchain computes something else; "
                                         "read the atc logs beside doctor.json")], record


# --- the whole check ----------------------------------------------------------------------------

def diagnose(output_dir, model_name, pretrained, explicit_weights=False, data_dir=None, dataset="flickr30k",
             task="retrieval", soc_version=None, run_smoke=True, require_npu=False):
    """Every check → the report written to ``output_dir/doctor.json`` (and ``doctor.md``)."""
    npu_host = shutil.which("npu-smi") is not None
    npu_path = npu_host or require_npu
    checks = python_checks() + cann_checks(npu_path) + tool_checks(npu_path)
    found, soc = npu_checks(npu_path, soc_version)
    checks += found
    checks.append(disk_check(output_dir))
    checks.append(weights_check(model_name, pretrained, explicit_weights))
    if data_dir:
        checks.append(data_check(data_dir, dataset, task))
    record = None
    npu_ready = not any(c.status != OK for c in checks if c.check in ("atc", "ais_bench", "aclruntime")) and soc
    if run_smoke and not any(c.status == FAIL and c.check in ("onnx", "onnxruntime", "torch", "open_clip_torch")
                             for c in checks):
        found, record = smoke(output_dir, soc, npu_path and npu_ready)
        checks += found
    failing = [check for check in checks if check.status == FAIL]
    path = "npu" if npu_path else "cpu"
    why = ("" if npu_path else "no npu-smi on this machine: BACKEND=auto runs ONNX Runtime on the CPU, same outputs")
    report = {"path": path, "ok": not failing, "why": why, "checks": [asdict(check) for check in checks],
              "smoke": record, "python": sys.executable, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(Path(output_dir) / "doctor.json", report)
    write_text(Path(output_dir) / "doctor.md", markdown(report))
    return report


def markdown(report):
    from .markdown import markdown_table

    rows = [[c["check"], c["status"], c["found"].replace("|", "/"), c["advice"].replace("|", "/")]
            for c in report["checks"]]
    return "\n".join([f"# openclip-ascend doctor ({report['date']})", "", verdict(report), "",
                      markdown_table(["check", "status", "found", "what to do"], rows), ""])


def verdict(report):
    path = "NPU (Ascend)" if report["path"] == "npu" else "CPU (ONNX Runtime fallback)"
    failing = [c for c in report["checks"] if c["status"] == FAIL]
    if failing:
        return f"The {path} path does NOT work here yet: {len(failing)} failing check(s)."
    return f"The {path} path works here." + (f" ({report['why']})" if report["why"] else "")


def terminal(report):
    """The table for the terminal: check, status, what was found; what to do on the line below."""
    width = max(len(c["check"]) for c in report["checks"])
    lines = []
    for c in report["checks"]:
        lines.append(f"{c['check']:<{width}}  {c['status'].upper():<4}  {c['found']}")
        if c["advice"] and c["status"] != OK:
            lines.append(f"{'':<{width}}        → {c['advice']}")
    return "\n".join(lines + ["", verdict(report)])

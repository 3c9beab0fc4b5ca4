"""The run's settings: every pipeline variable and flag, checked before anything runs, and kept with
the run in ``OUT/settings.json`` so that each later step — re-run alone, days later, from another
shell — describes the run that produced its numbers.

A setting comes from its flag, else its environment variable, else what the run folder recorded,
else its default. Settings that decide what a step's outputs are (the model, the data, the batch
sizes, the backend, the precision, …) are the run's identity: given again with another value they
are refused with one line naming both, unless ``--reconfigure`` (``RECONFIGURE=1``) says to apply
it, which marks the outputs of every step from the first one it changes as stale until they are
made again. Operational settings (workers, loops, budgets, the sweep) are remembered as defaults and
may change freely: the outputs they affect record them.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from .files import KitError, read_json, write_json

SETTINGS_FILE = "settings.json"
TRUE, FALSE = ("1", "yes", "true"), ("0", "no", "false")


def boolean(text):
    lowered = str(text).strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError("expected 1/0, yes/no or true/false")


def whole(minimum, maximum=None):
    def parse(text):
        try:
            value = int(str(text).strip())
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"≥ {minimum}"
            raise ValueError(f"expected a whole number {bound}")
        return value
    return parse


def number(minimum, inclusive=True):
    def parse(text):
        try:
            value = float(str(text).strip())
        except ValueError:
            value = None
        if value is None or value != value or value < minimum or (not inclusive and value == minimum):
            raise ValueError(f"expected a number {'≥' if inclusive else '>'} {minimum:g}")
        return value
    return parse


def choice(*options):
    def parse(text):
        if text not in options:
            raise ValueError(f"choose {', '.join(options)}")
        return text
    return parse


def folder(text):
    path = Path(text).expanduser()
    if not path.is_dir():
        raise ValueError("no such folder")
    return str(path.resolve())


def file(text):
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError("no such file")
    return str(path.resolve())


def integers(minimum):
    def parse(text):
        from .cli import csv_ints

        try:
            return list(csv_ints(text, minimum))
        except KitError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from exc
    return parse


def tasks(text):
    from .pipeline import TASK_INPUTS

    found = [task.strip() for task in str(text).split(",") if task.strip()]
    if not found or any(task not in TASK_INPUTS for task in found) or len(set(found)) != len(found):
        raise ValueError(f"the tasks are {' and '.join(TASK_INPUTS)}, comma-separated, each once")
    return found


def text_lengths(text):
    from .model.text_lengths import parse_text_lengths

    if str(text).strip() == "full":
        return []
    try:
        return parse_text_lengths(text)
    except KitError as exc:
        raise ValueError("expected dyn, token counts ≥ 3 such as dyn,32, or full") from exc


def precision(text):
    from .ascend.atc import precision_by_tower

    precision_by_tower(text)  # ValueError with what is accepted
    return text


def variants(text):
    from .ascend.atc_presets import parse_variants

    try:
        parse_variants(text)
    except KitError as exc:
        raise ValueError(str(exc)) from exc
    return text


def soc_version(text):
    if not str(text).startswith("Ascend") or len(str(text)) <= len("Ascend"):
        raise ValueError("expected atc's --soc_version, e.g. Ascend910B4 or Ascend310P3")
    return text


def pretrained(text):
    return str(Path(text).expanduser().resolve()) if Path(text).expanduser().is_file() else text


@dataclass(frozen=True)
class Setting:
    field: str  # RunConfig's field
    env: str
    flag: str
    parse: object  # text → value; ValueError("expected …") for a bad one
    default: object
    step: int  # the first step whose outputs it decides; None: operational (outputs record it)
    help: str
    inverted_flag: bool = False  # --no-reference: the flag sets False
    task: str = None  # the task whose data it names: free to set while the run folder has no such task yet


def _settings():
    from .model.loading import TINY_MODEL

    return (
        Setting("tasks", "TASK", "--task", tasks, ["retrieval"], 1,
                "retrieval, zeroshot or both, comma-separated (default retrieval)"),
        Setting("data_dir", "DATA_DIR", "--data-dir", folder, None, 1,
                "the data folder: flickr30k (or MSCOCO) for retrieval; with --task zeroshot alone, the class folders; "
                "default: generate the sample", task="retrieval"),
        Setting("dataset", "DATASET", "--dataset", choice("flickr30k", "mscoco"), "flickr30k", 1,
                "DATA_DIR's layout: flickr30k, or mscoco (CLIP_benchmark's val2014/ + coco_test_karpathy.json)",
                task="retrieval"),
        Setting("zeroshot_dir", "ZEROSHOT_DIR", "--zeroshot-dir", folder, None, 1,
                "zero-shot classes: ROOT/<class folder>/*.jpg, folders sorted by name = labels; default: DATA_DIR "
                "with --task zeroshot alone, else generate the colour sample", task="zeroshot"),
        Setting("zeroshot_dataset", "ZEROSHOT_DATASET", "--zeroshot-dataset", choice("imagenet1k", "cifar10", "cifar100"),
                None, 1, "built-in class names and templates (CLIP_benchmark's)", task="zeroshot"),
        Setting("classnames", "CLASSNAMES", "--classnames", file, None, 1,
                "zero-shot class names, one per line in label order", task="zeroshot"),
        Setting("templates", "TEMPLATES", "--templates", file, None, 1,
                "zero-shot prompt templates, one per line with {c} for the class name", task="zeroshot"),
        Setting("model_name", "MODEL_NAME", "--model-name", str, TINY_MODEL, 1, "open_clip model name"),
        Setting("pretrained", "PRETRAINED", "--pretrained", pretrained, None, 1,
                f"checkpoint file or pretrained tag (downloaded as open_clip does, through HF_ENDPOINT); none: "
                f"random weights; {TINY_MODEL} defaults to its bundled weights, other models to laion2b_s34b_b79k"),
        Setting("on_error", "ON_ERROR", "--on-error", choice("stop", "skip"), "stop", None,
                "a bad image or caption line: stop (default), or leave it out, record it in the manifest and go on"),
        Setting("workers", "WORKERS", "--workers", whole(1), None, None, "preprocessing processes (default: all cores)"),
        Setting("opset", "OPSET", "--opset", whole(11, 17), None, 2, "ONNX opset, 11–17 (default 14)"),
        Setting("int8", "INT8", "--int8", boolean, False, 2, "also run the int8 ONNX Runtime fallback"),
        Setting("fp16_estimate", "FP16_ESTIMATE", "--fp16-estimate", boolean, False, 2,
                "estimate an fp16 OM's accuracy on the CPU (fp16 rounding of weights and activations)"),
        Setting("text_lengths", "TEXT_LENGTHS", "--text-lengths", text_lengths, ["dyn"], 2,
                "exact text-length trimming: dyn (ONNX Runtime runs each batch of length-sorted captions only as far "
                "as its longest), plus token counts such as 32 for static length-bucket OMs; full: every caption at "
                "the full context (default dyn)"),
        Setting("precision_search", "PRECISION_SEARCH", "--precision-search", boolean, False, 2,
                "find each tower's nodes to keep in fp32 against the fp16 simulation (openclip_precision.py search) "
                "after step 2; step 3 compiles with them unless --precision-mode is given"),
        Setting("backend", "BACKEND", "--backend", choice("auto", "ascend", "onnxruntime"), "auto", 3,
                "auto: the NPU where npu-smi is (its tools must be there too), else ONNX Runtime on the CPU"),
        Setting("soc_version", "SOC_VERSION", "--soc-version", soc_version, None, 3,
                "atc soc version, e.g. Ascend910B4; default: npu-smi"),
        Setting("precision_mode", "PRECISION", "--precision-mode", precision, None, 3,
                "atc precision: fp16, fp32, mixed, keep:FILE, vision=mixed,text=fp16 or an atc --precision_mode"),
        Setting("dynamic_batch", "DYNAMIC_BATCH", "--dynamic-batch", boolean, False, 3,
                "one dynamic-batch OM per tower, run at each batch size as a gear"),
        Setting("batch_sizes", "BATCH_SIZES", "--batch-sizes", integers(1), [1, 4, 8], 4,
                "batch sizes to compile, run and time (default 1,4,8)"),
        Setting("reference", "REFERENCE", "--no-reference", boolean, True, 4, "skip the PyTorch reference [REFERENCE=0]",
                inverted_flag=True),
        Setting("gpu", "GPU", "--gpu", boolean, False, 4, "also run the ONNX models on CUDA (needs onnxruntime-gpu)"),
        Setting("devices", "DEVICES", "--devices", integers(0), [0], 4, "NPU ids, e.g. 0,1 (default 0)"),
        Setting("aipp_estimate", "AIPP_ESTIMATE", "--aipp-estimate", boolean, False, 5,
                "estimate the accuracy cost of feeding the vision OM uint8 images normalised by AIPP (its fp16 "
                "arithmetic emulated on the CPU)"),
        Setting("perf_loops", "PERF_LOOPS", "--perf-loops", whole(1), 20, None, "pure-inference runs per figure (20)"),
        Setting("perf_budget", "PERF_BUDGET", "--perf-budget", number(0), 0.0, None,
                "seconds a noisy throughput figure may be measured again until stable (default 0)"),
        Setting("require_idle", "REQUIRE_IDLE", "--require-idle", boolean, False, None,
                "stop when npu-smi shows a device busy before step 6, instead of a warning"),
        Setting("variants", "VARIANTS", "--variants", variants, None, None,
                "Ascend: in step 6 also compile and compare atc preset and NPU-graph option combinations (base, npu, "
                "padrows, nopad, qkv, argmax, hp, smallch, nofuseattn, aipp joined by +, e.g. base,npu,npu+hp; or auto "
                "for the kit's list) and choose the fastest OM of each tower that keeps PyTorch's accuracy"),
        Setting("accuracy_subset", "ACCURACY_SUBSET", "--accuracy-subset", whole(0), 200, None,
                "images the sweep judges accuracy on (0: all; default 200)"),
        Setting("profile", "PROFILE", "--profile", boolean, False, None,
                "Ascend: step 6 also runs each tower's OM at the largest batch size under msprof"),
        Setting("peak_tflops", "PEAK_TFLOPS", "--peak-tflops", number(0, inclusive=False), None, None,
                "the chip's fp16 peak TFLOP/s, set beside the profile's achieved figure"),
    )


SETTINGS = _settings()
BY_FIELD = {setting.field: setting for setting in SETTINGS}


def add_arguments(parser):
    """One flag per setting; each defaults to None so that a flag given can be told from one absent."""
    for setting in SETTINGS:
        text = f"{setting.help} [{setting.env}]"
        if setting.parse is boolean:
            parser.add_argument(setting.flag, dest=setting.field, action="store_const",
                                const=not setting.inverted_flag, default=None, help=text)
        else:
            parser.add_argument(setting.flag, dest=setting.field, default=None, help=text)
    parser.add_argument("--reconfigure", action="store_const", const=True, default=None,
                        help="apply settings that differ from the run's (settings.json) and mark the outputs they "
                             "change as stale until re-made [RECONFIGURE=1]")


def given_settings(args, environ=None):
    """{field: (value, label as given)} for every setting set by a flag or an environment variable,
    each checked: a bad one is one line naming it, its value and what is accepted."""
    environ = os.environ if environ is None else environ
    given = {}
    for setting in SETTINGS:
        flagged = getattr(args, setting.field, None)
        if flagged is not None:
            raw, label = flagged, setting.flag
        elif environ.get(setting.env, "").strip():
            raw, label = environ[setting.env].strip(), setting.env
        else:
            continue
        if isinstance(raw, bool):
            given[setting.field] = (raw, setting.flag)
            continue
        as_given = f"{label}={raw}" if label == setting.env else f"{label} {raw}"
        try:
            given[setting.field] = (setting.parse(raw), as_given)
        except ValueError as exc:
            raise KitError(f"{as_given}: {exc}") from exc
    return given


def reconfigure_requested(args, environ=None):
    environ = os.environ if environ is None else environ
    if args.reconfigure:
        return True
    raw = environ.get("RECONFIGURE", "").strip()
    try:
        return boolean(raw) if raw else False
    except ValueError as exc:
        raise KitError(f"RECONFIGURE={raw}: {exc}") from exc


def shown(value):
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def stored(output_dir):
    path = Path(output_dir) / SETTINGS_FILE
    return read_json(path) if path.is_file() else None


def merge(output_dir, given, reconfigure=False):
    """The run's settings: ``given`` over what ``OUT/settings.json`` recorded over the defaults → (values,
    stale). A run-identity setting given with another value than the recorded one is a KitError naming
    both, unless ``reconfigure``; then ``stale`` = {"from_step", "changed"} (merged with any earlier)."""
    record = stored(output_dir) or {}
    recorded = record.get("settings", {})
    this_run = given["tasks"][0] if "tasks" in given else recorded.get("tasks", ["retrieval"])
    if this_run == ["zeroshot"] and "data_dir" in given and "zeroshot_dir" not in given:
        given = {**given, "zeroshot_dir": given["data_dir"]}  # TASK=zeroshot DATA_DIR=…: the class folders
        del given["data_dir"]
    values, conflicts = {}, {}
    for setting in SETTINGS:
        if setting.field in given:
            values[setting.field] = given[setting.field][0]
        elif setting.field in recorded:
            values[setting.field] = recorded[setting.field]
        else:
            values[setting.field] = setting.default
        if (setting.field == "tasks" or setting.step is None or setting.field not in given or setting.field not in recorded
                or (setting.task and setting.task not in recorded.get("tasks", []))):
            continue
        if not _same(recorded[setting.field], _comparable(setting.field, values[setting.field])):
            conflicts[setting.field] = (recorded[setting.field], values[setting.field])
    stale = record.get("stale")
    if conflicts and not reconfigure:
        where = Path(output_dir) / SETTINGS_FILE
        listed = "; ".join(f"{given[field][1]} but this run has {shown(old)}" for field, (old, _) in conflicts.items())
        raise KitError(f"{listed} ({where}): use another OUT for another run, or add --reconfigure (RECONFIGURE=1) "
                       "to apply it here and re-make the outputs it changes")
    if conflicts:
        first = min(BY_FIELD[field].step for field in conflicts)
        changed = {**(stale or {}).get("changed", {}),
                   **{BY_FIELD[field].env: [shown(old), shown(new)] for field, (old, new) in conflicts.items()}}
        stale = {"from_step": min(first, (stale or {}).get("from_step", first)), "changed": changed}
    return values, stale


def _comparable(field, value):
    """What the run folder records for a given value: the backend auto resolves to (the outputs are that
    backend's), every other value as it is."""
    if field == "backend" and value == "auto":
        from .pipeline import resolve_backend

        return resolve_backend(value)[0]
    return value


def _same(old, new):
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) == list(new)
    return old == new


def _is_set(field, value):
    """Not empty and not the off value a setting starts at (INT8=0, PERF_BUDGET=0). An off value whose default
    is on (REFERENCE=0) and a 0 that means every item (ACCURACY_SUBSET=0) are settings a rerun needs."""
    default = BY_FIELD[field].default
    return value not in (None, [], "") and (bool(default) or value != default)


def recorded(output_dir):
    """(variable, value as it would be set) for every setting the run folder recorded and that is set."""
    values = (stored(output_dir) or {}).get("settings", {})
    return [(BY_FIELD[field].env, shown(value)) for field, value in values.items()
            if field in BY_FIELD and _is_set(field, value)]


def record(config, steps_done=()):
    """Write ``OUT/settings.json`` from ``config`` after a step finished: the values (the backend as auto
    resolved it), every task the run folder holds, and which steps are still stale after a reconfigure."""
    from . import __version__

    previous = stored(config.output_dir) or {}
    values = {setting.field: getattr(config, setting.field) for setting in SETTINGS}
    values["backend"] = config.resolved_backend
    values["tasks"] = sorted(set(previous.get("settings", {}).get("tasks", [])) | set(config.tasks),
                             key=["retrieval", "zeroshot"].index)
    values = {field: list(value) if isinstance(value, tuple) else (str(value) if isinstance(value, Path) else value)
              for field, value in values.items()}
    stale = config.stale
    for step in steps_done:  # re-made in order from the first stale step: no longer stale
        if stale and step == stale["from_step"]:
            stale = {**stale, "from_step": step + 1} if step < 7 else None
    config.stale = stale
    data = {"kit_version": __version__, "settings": values}
    if stale:
        data["stale"] = stale
    write_json(Path(config.output_dir) / SETTINGS_FILE, data)

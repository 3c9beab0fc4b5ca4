"""Step 3: ONNX → OM with atc, one OM per tower × batch size (or one dynamic-batch OM per tower).

Commands are the reference ones: ``atc --framework=5 --model=X.onnx --output=PREFIX
--input_format=NCHW|ND --input_shape="<name>:<shape>" --log=error --soc_version=Ascend<Name>``, the
input name and shape read from the ONNX graph itself so any model and image size works. atc may
write ``PREFIX.om`` or ``PREFIX_linux_<arch>.om``; the produced file is looked up, never assumed.
"""

import functools
import json
import re
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..files import KitError, atomic_path, write_json, write_text
from ..model.export import onnx_path
from ..model.text_lengths import DYNAMIC_LENGTH, base_tower, text_graph
from ..model.towers import TOWERS

ATC_SUCCESS = "ATC run success"
ERROR_CODE = re.compile(r"\b(E[0-9A-Z]{5})\b")
NEWER_ERROR_LINE = re.compile(r"^\[PID: ?\d+\].*?\((E[0-9A-Z]{5})\):\s*(.*)$")
PRECISION_FLAGS = ("--precision_mode", "--precision_mode_v2")


@dataclass
class AtcJob:
    tower: str
    batch: str  # "8", or "1,4,8" for a dynamic-batch OM
    onnx: Path
    output: Path  # atc --output: no suffix
    command: list
    status: str = "pending"
    seconds: float = 0.0
    om: Path = None
    error: str = ""
    keep_dtype: list = field(default_factory=list)  # node names the mixed preset keeps in fp32
    log: Path = field(init=False)

    def __post_init__(self):
        self.log = self.output.with_name(self.output.name + ".atc.log")

    @property
    def record(self):
        return self.output.with_name(self.output.name + ".atc.json")


@functools.lru_cache(maxsize=8)
def _graph_facts(path, mtime_ns):
    """(graph inputs [(name, dims)], nodes [(name, op_type)], external data locations) of one graph
    version, read once: a graph with embedded weights is hundreds of MB to parse."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [(i.name, [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
              for i in graph.input if i.name not in initializers]
    locations = {entry.value for init in graph.initializer for entry in init.external_data if entry.key == "location"}
    return inputs, [(node.name, node.op_type) for node in graph.node], locations


def graph_facts(path):
    path = Path(path)
    if not path.is_file():
        raise KitError(f"{path}: ONNX model not found; export it with openclip_torch2onnx.py")
    return _graph_facts(str(path), path.stat().st_mtime_ns)


def graph_input(path):
    """(input name, dims with None for symbolic ones) of a single-input ONNX graph."""
    inputs = graph_facts(path)[0]
    if len(inputs) != 1:
        raise KitError(f"{path}: expected one graph input, found {[name for name, _ in inputs]}")
    return inputs[0]


def input_shape_arg(name, dims, batch):
    """``image:8,3,224,224``; ``batch`` -1 for a dynamic-batch OM."""
    if any(d is None for d in dims[1:]):
        raise KitError(f"input {name!r} has a symbolic non-batch axis {dims}; export with fixed image size and context")
    return f"{name}:" + ",".join(str(d) for d in [batch] + list(dims[1:]))


# Kit presets; any other value passes through as atc's own --precision_mode value.
PRECISION_PRESETS = {
    "fp16": [],  # atc's default, force_fp16 on 310P and 910B alike
    "fp32": ["--precision_mode=must_keep_origin_dtype"],
    "mixed": ["--precision_mode=force_fp16"],  # plus --keep_dtype: LayerNorm, Softmax and the head in fp32
}
# the values GE's option check accepts (ge compiler/api/aclgrph/option_utils.cc, api/atc/cmd_flag_info.cc);
# atc refuses any other with E10001
ATC_PRECISION_MODES = ("force_fp16", "force_fp32", "cube_fp16in_fp32out", "allow_mix_precision", "allow_fp32_to_fp16",
                       "must_keep_origin_dtype", "allow_mix_precision_fp16", "allow_mix_precision_bf16",
                       "allow_fp32_to_bf16")
ATC_PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "cube_hif8",
                          "mixed_hif8")
LAYERNORM_SCOPE = re.compile(r"^(ln(_\w+)?|(layer_?)?norm\w*)$", re.IGNORECASE)


CUBE_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "QLinearConv"}


def is_310p(soc_version):
    return str(soc_version).lower().startswith("ascend310p")


def keep_dtype_nodes(path, soc_version=""):
    """ONNX node names the ``mixed`` preset keeps in fp32: every node inside a LayerNorm module scope
    (``…/ln_1/ReduceMean``), every Softmax, and the head after the last LayerNorm (pooling, final
    projection, L2 normalisation). On 310P only vector ops: it has no fp32 Cube path, so a MatMul or
    Conv kept in fp32 would run on the AI CPU."""
    nodes = graph_facts(path)[1]
    in_norm = [any(LAYERNORM_SCOPE.match(part) for part in name.split("/")[:-1]) or op_type == "LayerNormalization"
               for name, op_type in nodes]
    last_norm = max((i for i, flag in enumerate(in_norm) if flag), default=len(nodes))
    vector_only = is_310p(soc_version)
    return [name for i, (name, op_type) in enumerate(nodes)
            if name and op_type != "Constant" and not (vector_only and op_type in CUBE_OPS)
            and (in_norm[i] or op_type == "Softmax" or i > last_norm)]


KEEP_FILE = "keep:"  # PRECISION=keep:FILE: force_fp16 with the nodes FILE names (openclip_precision.py search) in fp32


def is_keep_file(mode):
    return bool(mode) and mode.startswith(KEEP_FILE)


def precision_keep_nodes(mode, path, soc_version=""):
    """Node names a precision mode keeps in fp32: the ``mixed`` preset's, a ``keep:FILE``'s (one name per
    line, checked against the graph and, on 310P, for matrix products), else none."""
    if mode == "mixed":
        return keep_dtype_nodes(path, soc_version)
    if not is_keep_file(mode):
        return []
    keep_path = Path(mode[len(KEEP_FILE):])
    try:
        names = [line.strip() for line in keep_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise KitError(f"--precision-mode {mode}: cannot read {keep_path} ({exc.strerror}); write it with "
                       "openclip_precision.py search") from exc
    check_keep_dtype(names, path)
    ops = dict(graph_facts(path)[1])
    cube = [name for name in names if ops.get(name) in CUBE_OPS]
    if cube and is_310p(soc_version):
        raise KitError(f"{keep_path}: keeps {cube[0]} ({ops[cube[0]]}) in fp32, which 310P can only run on the AI CPU; "
                       f"search again with --soc-version {soc_version}")
    return names


def check_precision_for_chip(mode, soc_version, tower):
    """310P has no fp32 Cube path: an fp32 preset would put Conv and MatMul on the AI CPU (or fail)."""
    if is_310p(soc_version) and mode in ("fp32", "must_keep_origin_dtype"):
        raise KitError(f"--precision-mode {mode} ({tower}) on {soc_version}: 310P has no fp32 Cube path, so Conv and "
                       "MatMul would fall back to the AI CPU or fail to compile; use mixed (LayerNorm and Softmax in "
                       "fp32, matrix products in fp16) or fp16 — fp32 is a 910B preset")


def check_external_data(path):
    """A graph over 2 GB keeps its weights in files beside it; atc reads them from there."""
    for location in sorted(graph_facts(path)[2]):
        if not (Path(path).parent / location).is_file():
            raise KitError(f"{Path(path).parent / location}: missing beside {path}, which keeps its weights there; "
                           "copy the graph and its .data file together (or re-export)")


def check_keep_dtype(names, path):
    """Older atc (CANN 6–7.0) fails a compile whose --keep_dtype names a node missing from the graph."""
    nodes = {name for name, _ in graph_facts(path)[1]}
    missing = [name for name in names if name not in nodes]
    if missing:
        raise KitError(f"{path}: the keep_dtype list names {len(missing)} nodes not in this graph (first: "
                       f"{missing[0]}); re-run convert on the graph it was made from")


def check_precision_mode(mode):
    """ValueError unless ``mode`` is a kit preset, ``keep:FILE`` with FILE present, or a mode atc accepts."""
    if mode in PRECISION_PRESETS or mode in ATC_PRECISION_MODES:
        return
    if is_keep_file(mode):
        if not Path(mode[len(KEEP_FILE):]).is_file():
            raise ValueError(f"{mode[len(KEEP_FILE):]} not found; write it with openclip_precision.py search")
        return
    raise ValueError(f"{mode!r} is neither a preset ({', '.join(PRECISION_PRESETS)}, keep:FILE) nor a mode atc "
                     f"accepts ({', '.join(ATC_PRECISION_MODES)})")


def precision_by_tower(value, towers=TOWERS):
    """``mixed`` for every tower, or ``vision=mixed,text=fp16`` → {tower: mode or None}; ValueError for a
    value atc or the kit would refuse."""
    chosen = {tower: value or None for tower in towers}
    if value and "=" in value and not is_keep_file(value):
        chosen = {tower: None for tower in towers}
        for part in value.split(","):
            tower, _, mode = part.partition("=")
            if tower.strip() not in chosen or not mode.strip():
                raise ValueError(f"write MODE, or TOWER=MODE pairs for the towers {', '.join(towers)}")
            chosen[tower.strip()] = mode.strip()
    for mode in chosen.values():
        if mode:
            check_precision_mode(mode)
    return chosen


def parse_precision(value, graphs):
    """``mixed`` for every graph, or ``vision=mixed,text=fp16`` per tower (a text length variant takes
    the text tower's) → {graph: preset or atc mode}."""
    try:
        chosen = precision_by_tower(value, sorted({base_tower(graph) for graph in graphs}))
    except ValueError as exc:
        raise KitError(f"--precision-mode {value}: {exc}") from exc
    return {graph: chosen[base_tower(graph)] for graph in graphs}


def precision_args(precision_mode=None, precision_mode_v2=None, keep_dtype_file=None):
    if precision_mode and precision_mode_v2:
        raise KitError("--precision-mode and --precision-mode-v2 cannot be combined: atc takes one of them")
    if precision_mode_v2:
        if precision_mode_v2 not in ATC_PRECISION_MODES_V2:
            raise KitError(f"--precision-mode-v2 {precision_mode_v2}: atc accepts {', '.join(ATC_PRECISION_MODES_V2)}")
        return [f"--precision_mode_v2={precision_mode_v2}"]
    if precision_mode in PRECISION_PRESETS:
        extra = [f"--keep_dtype={keep_dtype_file}"] if precision_mode == "mixed" else []
        return PRECISION_PRESETS[precision_mode] + extra
    return [f"--precision_mode={precision_mode}"] if precision_mode else []


def om_stem(prefix, tower, batch_label, tag=""):
    return Path(f"{prefix}_{tower}_{batch_label}" + (f"_{tag}" if tag else ""))


def plan_jobs(onnx_prefix, towers, batch_sizes, soc_version, output_dir=None, dynamic_batch=False,
              precision_mode=None, precision_mode_v2=None, atc_args="", tag=""):
    """The atc commands to run: one per graph × batch size, or one per graph with all gears; ``towers``
    holds graph names (``vision``, ``text``, a text length bucket ``text_len32``)."""
    extra = shlex.split(atc_args or "")
    if any(arg.split("=")[0] in PRECISION_FLAGS + ("--keep_dtype",) for arg in extra):
        raise KitError("--atc-args: pass precision through --precision-mode / --precision-mode-v2")
    modes = parse_precision(precision_mode, list(towers))
    gears = sorted(set(batch_sizes))
    if dynamic_batch and not 2 <= len(gears) <= 100:
        raise KitError(f"--dynamic-batch with batch sizes {','.join(map(str, batch_sizes))}: atc needs 2 to 100 distinct "
                       "gears (E10035); give several, e.g. 1,4,8, or compile a static OM without --dynamic-batch")
    prefix = Path(onnx_prefix)
    out_prefix = Path(output_dir) / prefix.name if output_dir else prefix
    jobs = []
    for tower in towers:
        if base_tower(tower) not in TOWERS or tower == text_graph(DYNAMIC_LENGTH):
            raise KitError(f"--towers: unknown graph {tower!r}; choose from vision, text and text length buckets "
                           "(text_len32: see --text-lengths)")
        model = onnx_path(prefix, tower)
        name, dims = graph_input(model)
        check_external_data(model)
        check_precision_for_chip(modes[tower], soc_version, base_tower(tower))
        gears = [",".join(str(b) for b in batch_sizes)] if dynamic_batch else [str(b) for b in batch_sizes]
        keep_nodes = precision_keep_nodes(modes[tower], model, soc_version)
        for gear in gears:
            label = "dynbs" if dynamic_batch else f"bs{gear}"
            output = om_stem(out_prefix, tower, label, tag)
            command = ["atc", "--framework=5", f"--model={model}", f"--output={output}",
                       f"--input_format={TOWERS[base_tower(tower)].input_format}",
                       f"--input_shape={input_shape_arg(name, dims, -1 if dynamic_batch else int(gear))}",
                       "--log=error", f"--soc_version={soc_version}"]
            if dynamic_batch:
                command.append(f"--dynamic_batch_size={gear}")
            # a keep:FILE is the mixed preset with FILE's names; an empty one (nothing to keep) is plain fp16
            mode = ("mixed" if keep_nodes else "fp16") if is_keep_file(modes[tower]) else modes[tower]
            keep_file = output.with_name(output.name + ".keep_dtype.cfg") if mode == "mixed" else None
            precision = precision_args(mode, precision_mode_v2, keep_file)
            jobs.append(AtcJob(tower, gear, model, output, command + precision + extra, keep_dtype=keep_nodes))
    return jobs


def find_om(output):
    """The OM atc wrote for ``--output=output``: ``output.om`` or ``output_linux_<arch>.om``."""
    pattern = re.compile(re.escape(output.name) + r"(_linux_[A-Za-z0-9_]+)?\.om")
    found = sorted(p for p in output.parent.glob(output.name + "*.om") if pattern.fullmatch(p.name))
    return found[0] if found else None


def required_om(prefix, graph, batch_label, advice):
    """The OM compiled for ``graph`` at ``batch_label`` (``bs8``, ``dynbs``), or a KitError ending in ``advice``."""
    stem = om_stem(prefix, graph, batch_label)
    om = find_om(stem)
    if om is None:
        raise KitError(f"{stem}.om not found; {advice}")
    return om


def is_up_to_date(job):
    """An OM newer than its ONNX, built by the same command, is not rebuilt."""
    om = find_om(job.output)
    if om is None or not job.record.is_file() or om.stat().st_mtime < job.onnx.stat().st_mtime:
        return None
    try:
        recorded = json.loads(job.record.read_text(encoding="utf-8")).get("command")
    except ValueError:
        return None
    return om if recorded == job.command else None


def first_error(log_text):
    """The first E-code line of atc's output in its log, or its first line mentioning an error; the command line
    the kit wrote above it (``$ atc …``) is not atc's output, and a path word like EXPORT reads as a code."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip() and not line.startswith("$ ")]
    for index, line in enumerate(lines):
        if ERROR_CODE.search(line):
            # CANN 8.5+ writes "[PID: n] <time> <title>(E10001): message": said as "E10001: message", as older atc
            newer = NEWER_ERROR_LINE.search(line)
            line = f"{newer.group(1)}: {newer.group(2)}" if newer else line
            if line.rstrip(".!").endswith("Inner Error") and index + 1 < len(lines):
                line = f"{line} {lines[index + 1]}"  # the cause is on the next line
            return line[:200]
    for line in lines:
        if "error" in line.lower() or "failed" in line.lower():
            return line[:200]
    return lines[-1][:200] if lines else "no output"


def run_job(job, force=False):
    """Run one atc command, its output to ``job.log``; never raises for an atc failure."""
    if not force:
        om = is_up_to_date(job)
        if om is not None:
            job.status, job.om = "skipped", om
            return job
    job.output.parent.mkdir(parents=True, exist_ok=True)
    if job.keep_dtype:
        check_keep_dtype(job.keep_dtype, job.onnx)
        write_text(job.output.with_name(job.output.name + ".keep_dtype.cfg"), "\n".join(job.keep_dtype) + "\n")
    start = time.perf_counter()
    with atomic_path(job.log) as tmp, open(tmp, "w", encoding="utf-8") as log:
        log.write("$ " + shlex.join(job.command) + "\n")
        log.flush()
        result = subprocess.run(job.command, stdout=log, stderr=subprocess.STDOUT, text=True)
    job.seconds = time.perf_counter() - start
    log_text = job.log.read_text(encoding="utf-8", errors="replace")
    job.om = find_om(job.output)
    if result.returncode == 0 and job.om is not None and ATC_SUCCESS in log_text:
        job.status = "ok"
        write_json(job.record, {"command": job.command, "om": str(job.om), "seconds": round(job.seconds, 1)})
    else:
        job.status = "failed"
        job.error = first_error(log_text) if result.returncode else f"atc exited 0 but wrote no {job.output}*.om"
    return job


def check_atc():
    if shutil.which("atc") is None:
        raise KitError("atc not found on PATH; source the CANN environment first, e.g. "
                       "`source /usr/local/Ascend/ascend-toolkit/set_env.sh`")


def run_jobs(jobs, parallel=1, force=False):
    """Run every job (``parallel`` at once); one failing batch size does not stop the others."""
    check_atc()
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda job: run_job(job, force), jobs))


def summary_rows(jobs):
    return [[job.tower, job.batch, job.status, f"{job.seconds:.1f}", str(job.om) if job.om else "",
             job.error] for job in jobs]


SUMMARY_HEADERS = ["tower", "batch size", "status", "seconds", "OM", "first error"]

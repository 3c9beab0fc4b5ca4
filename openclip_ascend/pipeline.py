"""The numbered ModelZoo steps as functions over one run folder, so each step runs alone or all in a row.

1 preprocess → 2 export ONNX → 3 convert to OM (Ascend only) → 4 infer (chosen backend and the PyTorch
reference, every batch size) → 5 accuracy → 6 performance → 7 report. Every step reads what the earlier ones
left in ``output_dir`` and writes its own results there; ``steps/*.sh`` and ``openclip_pipeline.py``
call these with the same configuration.

Tasks: ``retrieval`` (flickr30k or MSCOCO: ``prep/``, ``infer/``, ``accuracy.json``) and ``zeroshot``
(an image-folder classification set: ``zeroshot/prep/``, ``zeroshot/infer/``, ``zeroshot.json``) share the
graphs, OMs and throughput; steps 1, 4 and 5 keep one entry per task in results.json, so a later run of
the other task into the same folder adds to the report instead of replacing it.
"""

import functools
import importlib.util
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .agreement import cosine_text
from .files import KitError, read_json, write_json
from .model.loading import TINY_MODEL, default_pretrained, is_random_weights, onnx_prefix
from .model.text_lengths import DYNAMIC_LENGTH, text_graph

STEP_NAMES = {1: "preprocess", 2: "export", 3: "convert", 4: "infer", 5: "accuracy", 6: "performance", 7: "report"}
INT8 = "onnxruntime-int8"
GPU = "onnxruntime-cuda"
FP16_ESTIMATE = "fp16-estimate"  # CPU run of the graph with fp16 rounding: accuracy only, not speed
TOWER_INPUTS = {"vision": "images", "text": "texts"}
TASK_INPUTS = {"retrieval": TOWER_INPUTS, "zeroshot": {"vision": "images", "text": "prompts"}}
PER_TASK_STEPS = (1, 4, 5)  # their results.json entry is {task: result}


@dataclass
class RunConfig:
    output_dir: Path
    model_name: str = TINY_MODEL
    pretrained: str = None
    data_dir: Path = None
    dataset: str = "flickr30k"  # the data folder's layout: flickr30k or mscoco (CLIP_benchmark's)
    batch_sizes: tuple = (1, 4, 8)
    backend: str = "auto"  # auto | ascend | onnxruntime
    reference: bool = True  # also run PyTorch eager, the accuracy and speed reference
    int8: bool = False  # also run the int8 (dynamically quantised) ONNX Runtime fallback
    gpu: bool = False  # also run the ONNX models on CUDA through onnxruntime-gpu
    fp16_estimate: bool = False  # estimate an fp16 OM's accuracy on the CPU before reaching an NPU
    aipp_estimate: bool = False  # estimate the accuracy cost of uint8 input normalised by AIPP (CPU emulation)
    dynamic_batch: bool = False  # one dynamic-batch OM per tower, its gears the batch sizes
    devices: list = field(default_factory=lambda: [0])  # NPU ids; several run one process each
    precision_mode: str = None  # atc precision preset or mode (see atc.PRECISION_PRESETS)
    soc_version: str = None
    workers: int = None
    opset: int = None
    perf_loops: int = 20
    perf_budget: float = 0.0  # seconds a noisy throughput figure may be re-measured until it is stable
    # exact text-length trimming: "dyn" runs each ONNX batch only as far as its longest caption; token
    # counts (e.g. 32) add static length-bucket OMs beside the full-length one
    text_lengths: list = field(default_factory=lambda: ["dyn"])
    precision_search: bool = False  # find the nodes to keep in fp32 (fp16 simulation); step 3 compiles with them
    require_idle: bool = False  # a busy NPU before step 6 stops the run instead of a warning
    variants: str = None  # atc preset / NPU-graph option combinations to sweep in step 6 (Ascend): base,npu,npu+hp or auto
    accuracy_subset: int = 200  # images the sweep judges each variant's accuracy on (0: all)
    profile: bool = False  # step 6 also runs the largest batch size under msprof (Ascend)
    peak_tflops: float = None  # the chip's fp16 peak, for the profile's achieved TFLOP/s
    tasks: tuple = ("retrieval",)  # retrieval (data_dir, dataset) and/or zeroshot (zeroshot_dir)
    zeroshot_dir: Path = None  # ROOT/<class folder>/*.jpg (default: generate the colour sample)
    zeroshot_dataset: str = None  # built-in class names and templates: imagenet1k, cifar10, cifar100
    classnames: Path = None  # one class name per line (label order)
    templates: Path = None  # one prompt template per line, {c} for the class name
    on_error: str = "stop"  # a bad image or caption line in step 1: stop, or skip it (recorded in the manifest)
    stale: dict = None  # after --reconfigure: {"from_step", "changed"} until those steps are made again
    commands: list = field(default_factory=list)  # equivalent CLI commands, for the record

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        self.pretrained = default_pretrained(self.model_name, self.pretrained)
        self.tasks, self.batch_sizes = tuple(self.tasks), tuple(self.batch_sizes)
        unknown = [task for task in self.tasks if task not in TASK_INPUTS]
        if unknown or not self.tasks:
            raise KitError(f"TASK={','.join(self.tasks)}: the tasks are {' and '.join(TASK_INPUTS)} (comma-separated)")

    @property
    def random_weights(self):
        return is_random_weights(self.pretrained)

    @property
    def resolved_backend(self):
        return resolve_backend(self.backend)[0]

    @property
    def prep(self):
        return self.task_prep("retrieval")

    def task_root(self, task):
        return self.output_dir if task == "retrieval" else self.output_dir / task

    def task_prep(self, task):
        return self.task_root(task) / "prep"

    @property
    def onnx_prefix(self):
        return onnx_prefix(self.output_dir, self.model_name)

    def infer_dir(self, backend, batch, task="retrieval"):
        return self.task_root(task) / "infer" / f"{backend}_bs{batch}"

    def log(self, *argv):
        line = shlex.join(str(a) for a in argv)
        self.commands.append(line)
        print(f"$ {line}")


ASCEND_FIXES = ("install Ascend's ais_bench and aclruntime wheels (Ascend/tools release page) into this Python and "
                "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` for atc")


def _importable(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def ascend_tools_missing(soc_version=None):
    """Which of the tools the NPU path needs this Python and PATH lack: npu-smi (unless the soc version is
    given), atc, ais_bench's InferSession and aclruntime, its back end."""
    missing = [tool for tool in ("npu-smi", "atc") if shutil.which(tool) is None
               and not (tool == "npu-smi" and soc_version)]
    missing += [] if _importable("ais_bench.infer.interface") else ["ais_bench"]
    return missing + ([] if _importable("aclruntime") else ["aclruntime"])


def missing_tools_error(missing, where):
    return KitError(f"{where} {', '.join(missing)} missing for {sys.executable} and this PATH; {ASCEND_FIXES} — or "
                    "BACKEND=onnxruntime (--backend onnxruntime) to run the CPU fallback on purpose")


def resolve_backend(requested):
    """(backend, reason). ``auto`` takes the NPU where ``npu-smi`` is, and then needs every NPU tool: on an
    NPU host a missing ais_bench, aclruntime or atc is an error, never a silent CPU run; without npu-smi
    it is ONNX Runtime on the CPU."""
    if requested in ("ascend", "onnxruntime"):
        return requested, "as chosen for this run"
    if requested != "auto":
        raise KitError(f"BACKEND={requested!r}: choose auto, ascend or onnxruntime")
    if shutil.which("npu-smi") is None:
        return "onnxruntime", "no npu-smi here: ONNX Runtime on the CPU, same outputs"
    missing = ascend_tools_missing()
    if missing:
        raise missing_tools_error(missing, "BACKEND=auto found npu-smi (an NPU host), but")
    return "ascend", "npu-smi, atc, ais_bench and aclruntime found"


def backends_of(config):
    backend, _ = resolve_backend(config.backend)
    extras = ([INT8] if config.int8 else []) + ([GPU] if config.gpu else []) + \
        ([FP16_ESTIMATE] if config.fp16_estimate else [])
    return [backend] + extras + (["torch"] if config.reference else [])


def step_preprocess(config):
    return {task: (_preprocess_retrieval if task == "retrieval" else _preprocess_zeroshot)(config)
            for task in config.tasks}


def _preprocess_retrieval(config):
    from .data.preprocess import preprocess_dataset
    from .data.sample import write_sample_dir

    data_dir = config.data_dir
    if data_dir is None:
        data_dir = write_sample_dir(config.output_dir / "sample")
        print(f"no data dir given: generated the sample set in {data_dir}")
    dataset = config.dataset if config.data_dir is not None else "flickr30k"
    config.log("python", "openclip_preprocess.py", "--data-dir", data_dir, "--save-dir", config.prep,
               "--model-name", config.model_name, *(["--dataset", dataset] if dataset != "flickr30k" else []),
               *(["--on-error", config.on_error] if config.on_error != "stop" else []))
    manifest = preprocess_dataset(data_dir, config.prep, config.model_name, config.pretrained, config.workers,
                                  on_error=config.on_error, dataset=dataset)
    return {"dataset": dataset, "images": len(manifest.images), "captions": len(manifest.captions),
            "skipped": len(manifest.skipped), **({"generated": True} if config.data_dir is None else {})}


def _preprocess_zeroshot(config):
    """The classification set's images and every class × template prompt, as openclip_zeroshot.py prepares them."""
    from .data.sample import CLASSIFICATION_TEMPLATES_FILE, write_classification_dir
    from .evaluate.zeroshot import load_set, write_prepared

    root, templates, name = config.zeroshot_dir, config.templates, config.zeroshot_dataset
    if root is None:
        root = write_classification_dir(config.output_dir / "sample_classification")
        templates, name = templates or root / CLASSIFICATION_TEMPLATES_FILE, name or "colour sample"
        print(f"no zero-shot data dir given: generated the colour classification sample in {root}")
    config.log("python", "openclip_zeroshot.py", "--data-dir", root,
               *(["--dataset", config.zeroshot_dataset] if config.zeroshot_dataset else []),
               *(["--classnames", config.classnames] if config.classnames else []),
               *(["--templates", templates] if templates else []), "--model-name", config.model_name, "--pretrained",
               config.pretrained, "--output-dir", config.task_root("zeroshot"), "--prepare-only")
    data = load_set(root, config.zeroshot_dataset, config.classnames, templates)
    return write_prepared(config.task_prep("zeroshot"), data, name or root, config.model_name, config.pretrained,
                          config.workers)


def step_export(config):
    from .model.export import DEFAULT_OPSET, export_model
    from .model.loading import load_model

    opset = config.opset or DEFAULT_OPSET
    config.log("python", "openclip_torch2onnx.py", "--model-name", config.model_name, "--pretrained",
               config.pretrained, "--onnx-prefix", config.onnx_prefix, "--opset", opset)
    model = load_model(config.model_name, config.pretrained)
    towers = export_model(model, config.onnx_prefix, opset=opset)
    lengths = _text_lengths(config, model)
    if lengths:
        from .model.export import export_text_lengths

        config.log("python", "openclip_torch2onnx.py", "--model-name", config.model_name, "--pretrained",
                   config.pretrained, "--onnx-prefix", config.onnx_prefix, "--opset", opset, "--towers", "text",
                   "--text-lengths", ",".join(map(str, lengths)))
        towers.update(export_text_lengths(model, config.onnx_prefix, lengths, opset))
    if config.int8:
        from .model.export import quantize_int8

        for graph in list(TOWER_INPUTS) + ([text_graph(DYNAMIC_LENGTH)] if DYNAMIC_LENGTH in lengths else []):
            towers[graph]["int8_path"] = str(quantize_int8(config.onnx_prefix, graph))
    if config.fp16_estimate:
        from .model.export import simulate_fp16

        for tower in TOWER_INPUTS:
            towers[tower]["fp16_estimate_path"] = str(simulate_fp16(config.onnx_prefix, tower))
    report = {"model_name": config.model_name, "pretrained": config.pretrained,
              "random_weights": config.random_weights, "towers": towers}
    if config.precision_search:
        if "retrieval" not in config.tasks:
            raise KitError("PRECISION_SEARCH=1 scores keep sets by retrieval recall: run it with TASK=retrieval")
        report["precision_search"] = _precision_search(config)
    write_json(config.output_dir / "export.json", report)
    return report


def _text_lengths(config, model):
    """The shorter text graphs this run makes: none when the text tower reads every token (said once)."""
    from .model.towers import trims_exactly

    if not config.text_lengths:
        return []
    if not trims_exactly(model):
        print(f"text length trimming off: {config.model_name}'s text tower attends to or pools every token, so every "
              "caption runs at the full context")
        return []
    return list(config.text_lengths)


def _exported_graphs(config):
    """Graph names step 2 wrote for this run (``text_dynlen``, ``text_len32``, …)."""
    path = config.output_dir / "export.json"
    return set(read_json(path).get("towers", {})) if path.is_file() else set()


def _text_graph(config, backend):
    """The text graph an ONNX Runtime backend runs: the dynamic-length one where step 2 made it (not for
    the fp16 estimate, which stands for the full-length OM)."""
    dynamic = text_graph(DYNAMIC_LENGTH)
    return dynamic if backend != FP16_ESTIMATE and dynamic in _exported_graphs(config) else "text"


def _length_buckets(config):
    """Static text lengths compiled beside the full-length OM, as step 2 exported them."""
    return sorted(int(graph.rsplit("len", 1)[1]) for graph in _exported_graphs(config)
                  if graph.startswith("text_len"))


def _precision_search(config):
    """``openclip_precision.py search`` for each tower on this run's preprocessed set → {tower: summary}."""
    from .evaluate.precision import prepare, run_search

    found = {}
    for tower in TOWER_INPUTS:
        out = config.output_dir / "precision"
        config.log("python", "openclip_precision.py", "search", "--model-name", config.model_name, "--pretrained",
                   config.pretrained, "--prep", config.prep, "--tower", tower, "--output-dir", out,
                   *(["--soc-version", config.soc_version] if config.soc_version else []))
        record = run_search(prepare(config.onnx_prefix, config.prep, tower, out), soc_version=config.soc_version or "")
        found[tower] = {key: record[key] for key in ("fp32", "fp16", "kept", "found", "keep_scopes", "recall_bound",
                                                     "min_cosine_bound")}
        found[tower].update(nodes=len(record["keep"]), keep_file=str(out / f"keep_dtype_{tower}.cfg"))
    return found


def _searched_precision(config):
    """``PRECISION`` from the precision search: each tower's keep file where it keeps anything."""
    path = config.output_dir / "export.json"
    searched = read_json(path).get("precision_search") if path.is_file() else None
    if not searched:
        return None
    return ",".join(f"{tower}=keep:{entry['keep_file']}" if entry["nodes"] else f"{tower}=fp16"
                    for tower, entry in searched.items())


def step_convert(config):
    from .ascend.atc import SUMMARY_HEADERS, plan_jobs, run_jobs, summary_rows
    from .ascend.npu_smi import detect_soc_version
    from .markdown import markdown_table

    backend, reason = resolve_backend(config.backend)
    if backend != "ascend":
        print(f"step 3 skipped: backend {backend} ({reason}) needs no OM")
        return {"skipped": reason}
    soc, _, warnings = detect_soc_version(config.soc_version)
    for warning in warnings:
        print(f"warning: {warning}")
    precision = config.precision_mode or (_searched_precision(config) if config.precision_search else None)
    buckets = ",".join(map(str, _length_buckets(config)))
    config.log("python", "convert/onnx2om.py", "--onnx-prefix", config.onnx_prefix, "--batch-sizes",
               ",".join(map(str, config.batch_sizes)), "--soc-version", soc,
               *(["--text-lengths", buckets] if buckets else []),
               *(["--dynamic-batch"] if config.dynamic_batch else []),
               *(["--precision-mode", precision] if precision else []))
    graphs = list(TOWER_INPUTS) + [text_graph(length) for length in _length_buckets(config)]
    jobs = run_jobs(plan_jobs(config.onnx_prefix, graphs, config.batch_sizes, soc,
                              dynamic_batch=config.dynamic_batch, precision_mode=precision))
    print(markdown_table(SUMMARY_HEADERS, summary_rows(jobs)))
    failed = [job for job in jobs if job.status == "failed"]
    if failed:
        raise KitError(f"{len(failed)} atc compiles failed (first: {failed[0].tower} bs{failed[0].batch}: "
                       f"{failed[0].error}); see {failed[0].log}")
    return {"soc_version": soc, "oms": {f"{job.tower}_bs{job.batch}": str(job.om) for job in jobs}}


def _om(config, tower, batch):
    """The tower's OM for ``batch``; for text with length buckets, theirs too, comma-separated
    (shortest first: the runner's BucketedSession)."""
    from .ascend.atc import required_om

    graphs = [tower] if tower == "vision" else [text_graph(length) for length in _length_buckets(config)] + [tower]
    label = "dynbs" if config.dynamic_batch else f"bs{batch}"
    return ",".join(str(required_om(config.onnx_prefix, graph, label, "run step 3 (convert) first")) for graph in graphs)


def _cpu_session(config, backend, tower):
    from .run.sessions import OnnxRuntimeSession, TorchSession

    if backend == "torch":
        return TorchSession(config.model_name, config.pretrained, tower)
    return OnnxRuntimeSession(_onnx_model(config, backend, tower), device="cuda" if backend == GPU else "cpu")


def _onnx_model(config, backend, tower):
    """The ONNX file an ONNX Runtime backend runs for ``tower``."""
    from .model.export import fp16_estimate_path, int8_path, onnx_path

    graph = _text_graph(config, backend) if tower == "text" else tower
    if backend == INT8:
        return int8_path(config.onnx_prefix, graph)
    if backend == FP16_ESTIMATE:
        return fp16_estimate_path(config.onnx_prefix, graph)
    return onnx_path(config.onnx_prefix, graph)


def _runs(config):
    """(backend, batch, tower, model flags, run) for every combination; ``run(**infer kwargs)`` returns
    the ais_bench-style summary. OMs run on ``config.devices`` (one process per device when several),
    dynamic-batch OMs at each gear; the CPU sessions are built once per tower."""
    from .run.runner import infer, infer_devices, infer_opened
    from .run.sessions import open_session

    for backend in backends_of(config):
        sessions = {}
        for batch in config.batch_sizes:
            for tower in TOWER_INPUTS:
                if backend == "ascend":
                    om, gear = _om(config, tower, batch), batch if config.dynamic_batch else None
                    flags = ["--model", om] + (["--dymBatch", gear] if gear else []) + \
                            (["--device", ",".join(map(str, config.devices))] if config.devices != [0] else [])
                    if len(config.devices) > 1:
                        run = functools.partial(infer_devices, {"backend": "ascend", "model": om, "dym_batch": gear},
                                                config.devices)
                    else:
                        run = functools.partial(infer_opened, functools.partial(
                            open_session, "ascend", om, device=config.devices[0], dym_batch=gear))
                else:
                    if tower not in sessions:
                        sessions[tower] = _cpu_session(config, backend, tower)
                    run = functools.partial(infer, sessions[tower])
                    flags = ["--backend", "torch", "--model-name", config.model_name, "--pretrained", config.pretrained,
                             "--tower", tower] if backend == "torch" else \
                        ["--model", _onnx_model(config, backend, tower)] + (["--device", "cuda"] if backend == GPU else [])
                yield backend, batch, tower, flags, run


def step_infer(config):
    results = {task: {} for task in config.tasks}
    for backend, batch, tower, flags, run in _runs(config):
        for task in config.tasks:
            folder, out = config.task_prep(task) / TASK_INPUTS[task][tower], config.infer_dir(backend, batch, task)
            config.log("python", "openclip_infer.py", *flags, "--input", folder, "--output", out, "--output_dirname",
                       tower, "--outfmt", "NPY", "--batchsize", batch)
            summary = run(input=str(folder), output=str(out), output_dirname=tower, outfmt="NPY", batchsize=batch)
            results[task].setdefault(backend, {}).setdefault(batch, {})[tower] = {
                "compute_fps": summary["throughput"], "e2e_fps": summary["e2e"]["fps"],
                **({"tokens_per_sample": summary["tokens_per_sample"]} if "tokens_per_sample" in summary else {})}
    return results


def step_accuracy(config):
    from .evaluate.postprocess import read_embedding_dir

    # batch by batch, so the PyTorch reference folders are read once per batch size and every
    # folder once per step (six folders cached: ~12 MB each on flickr30k with ViT-B-32)
    read = functools.lru_cache(maxsize=6)(read_embedding_dir)
    return {task: (_retrieval_accuracy if task == "retrieval" else _zeroshot_accuracy)(config, read)
            for task in config.tasks}


def _embedding_folders(config, task):
    """(batch, backend, output folder, agreement with PyTorch's folder or None) in step 5's order."""
    for batch in config.batch_sizes:
        for backend in backends_of(config):
            out = config.infer_dir(backend, batch, task)
            if not (out / "vision").is_dir():
                raise KitError(f"{out / 'vision'}: no embeddings; run step 4 (infer) first")
            reference = config.infer_dir("torch", batch, task)
            yield batch, backend, out, reference if backend != "torch" and (reference / "vision").is_dir() else None


def _agreement(reference, out, read):
    from .evaluate.postprocess import embedding_agreement

    return {tower: embedding_agreement(reference / tower, out / tower, read=read) for tower in TOWER_INPUTS}


def _retrieval_accuracy(config, read):
    import sys

    from .evaluate.postprocess import degenerate_warning, evaluate_folders, retrieval_record, tie_note
    from .markdown import save_table
    from .report.plots import plot_accuracy
    from .report.tables import comparison_table, metrics_line, recall_table

    backends = backends_of(config)
    accuracy = []
    for batch, backend, out, reference in _embedding_folders(config, "retrieval"):
        config.log("python", "openclip_postprocess.py", "--vision-embeds", out / "vision", "--text-embeds",
                   out / "text", "--manifest", config.prep / "manifest.json")
        result, counts = evaluate_folders(out / "vision", out / "text", config.prep / "manifest.json", read=read)
        skipped = counts["skipped_in_preprocessing"]
        note = f" (over {counts['images']} images; {skipped} items skipped in preprocessing)" if skipped else ""
        print(f"{backend} bs{batch}: {metrics_line(result)}{note}")
        note = tie_note(result)
        if note:
            print(f"  {note}")
        warning = degenerate_warning(result.problems, f"{backend} bs{batch}")
        if warning:
            print(warning, file=sys.stderr)
        entry = {"backend": backend, "batch_size": batch, **retrieval_record(result, counts)}
        if reference:
            entry["agreement"] = _agreement(reference, out, read)
        accuracy.append(entry)
    accuracy.sort(key=lambda entry: backends.index(entry["backend"]))  # stable: batch sizes stay in order
    write_json(config.output_dir / "accuracy.json", accuracy)
    print(save_table(config.output_dir / "recall", *recall_table(accuracy),
                     title="Recall (CLIP_benchmark definition)"))
    if config.aipp_estimate:
        from .evaluate.aipp_estimate import estimate

        cost = estimate(config.onnx_prefix, config.prep)
        write_json(config.output_dir / "aipp_estimate.json", cost)
        print(f"AIPP estimate (uint8 input, fp16 normalisation on the chip, emulated): image R@5 "
              f"{cost['aipp']['image_retrieval_recall@5']:.4f} (float input {cost['float']['image_retrieval_recall@5']:.4f}), "
              f"vision min cosine to the float path {cosine_text(cost['vision_agreement']['min_cosine'])}")
    if config.reference:
        print(save_table(config.output_dir / "accuracy_vs_torch", *comparison_table(accuracy),
                         title="Against PyTorch: recall@5 and embedding agreement"))
    plot_accuracy(accuracy, config.output_dir / "accuracy.png", _title(config))
    return accuracy


def _zeroshot_accuracy(config, read):
    """CLIP_benchmark's classification metrics per backend and batch size: one CLIP_benchmark result file
    each (``zeroshot/results_{backend}_bs{N}.json``), all of them in ``zeroshot.json``."""
    from .evaluate.zeroshot import evaluate_prepared, report_accuracy
    from .markdown import save_table
    from .report.tables import zeroshot_table

    backends, prep = backends_of(config), config.task_prep("zeroshot")
    accuracy = []
    for batch, backend, out, reference in _embedding_folders(config, "zeroshot"):
        results_file = config.task_root("zeroshot") / f"results_{backend}_bs{batch}.json"
        config.log("python", "openclip_zeroshot.py", "--prep", prep, "--vision-embeds", out / "vision",
                   "--text-embeds", out / "text", "--backend", backend, "--batch-size", batch, "--results-file",
                   results_file)
        record = evaluate_prepared(prep, out / "vision", out / "text", backend, batch, read=read)
        write_json(results_file, record)
        report_accuracy(record)
        if reference:
            record = {**record, "agreement": _agreement(reference, out, read)}
        accuracy.append(record)
    accuracy.sort(key=lambda entry: backends.index(entry["backend"]))
    write_json(config.output_dir / "zeroshot.json", accuracy)
    print(save_table(config.output_dir / "zeroshot", *zeroshot_table(accuracy),
                     title="Zero-shot classification (CLIP_benchmark definitions)"))
    return accuracy


def step_performance(config):
    import sys

    from .ascend.npu_smi import idle_check
    from .markdown import save_table
    from .report.plots import plot_throughput
    from .report.tables import noisy_cells, throughput_table

    if (config.variants or config.profile) and resolve_backend(config.backend)[0] != "ascend":
        raise KitError("VARIANTS and PROFILE compile, time and profile OMs: they need the NPU (npu-smi, atc and "
                       "ais_bench; BACKEND=ascend)")
    npu_state, busy = {}, []
    if resolve_backend(config.backend)[0] == "ascend":  # a figure taken on a busy NPU is not the model's
        npu_state, busy = idle_check(config.devices, config.require_idle)
        for warning in busy:
            print(f"warning: {warning}", file=sys.stderr)
    throughput, latency, per_device, spreads = {}, {}, {}, {}
    for backend, batch, tower, flags, run in _runs(config):
        if backend == FP16_ESTIMATE:
            continue  # its casts make it slower than fp32 on a CPU: an accuracy estimate only
        config.log("python", "openclip_infer.py", *flags, "--loop", config.perf_loops, "--batchsize", batch)
        deadline = time.perf_counter() + config.perf_budget
        while True:  # a noisy figure (other load on the machine) is measured again while the budget lasts
            summary = run(output=str(config.output_dir / "perf" / backend), output_dirname=f"{tower}_bs{batch}",
                          batchsize=batch, loop=config.perf_loops)
            if not summary["spread"]["noisy"] or time.perf_counter() >= deadline:
                break
        throughput.setdefault(backend, {}).setdefault(batch, {})[tower] = summary["throughput"]
        latency.setdefault(backend, {}).setdefault(batch, {})[tower] = summary["latency_ms"]
        spreads.setdefault(backend, {}).setdefault(batch, {})[tower] = summary["spread"]
        if "devices" in summary:
            per_device.setdefault(backend, {}).setdefault(batch, {})[tower] = {
                device: entry["throughput"] for device, entry in summary["devices"].items()}
    noisy = {backend: noisy_cells(by_batch) for backend, by_batch in spreads.items()}
    for backend, by_batch in throughput.items():
        print(save_table(config.output_dir / f"throughput_{backend}", *throughput_table(by_batch, noisy[backend]),
                         title=f"Pure-inference throughput, {backend} (fps = 1000 × batch / mean compute ms)"))
    plot_throughput(throughput, config.output_dir / "throughput.png", _title(config), noisy)
    performance = {"throughput": throughput, "latency_ms": latency, "loops": config.perf_loops,
                   "per_device": per_device, "spread": spreads, "npu_state": npu_state, "npu_warnings": busy}
    if config.profile:
        performance["profile"] = _profile(config, throughput["ascend"])
        performance["peak_tflops"] = config.peak_tflops
    if config.variants:
        from .report.sweep import parse_options, run_sweep

        performance["variants"] = run_sweep(config, parse_options(config.variants, config.accuracy_subset))
    write_json(config.output_dir / "performance.json", performance)
    return performance


def _profile(config, fps_by_batch):
    """Each tower's OM at the largest batch size under msprof → {tower: npu_profile record}."""
    from .ascend.profile import flops_per_sample, profile_om
    from .model.loading import load_model

    batch = max(config.batch_sizes)
    model = load_model(config.model_name, config.pretrained)
    records = {}
    for tower in TOWER_INPUTS:
        om = _om(config, tower, batch).split(",")[-1]  # the full-length text OM, not a length bucket
        records[tower] = profile_om(om, batch, config.perf_loops, config.output_dir / "profile" / f"{tower}_bs{batch}",
                                    fps_by_batch[batch][tower], flops_per_sample(model, tower), config.dynamic_batch)
        config.log(*shlex.split(records[tower]["command"]))
    return records


def _title(config):
    """The plots' title: model, device and data, as the report names them."""
    from .report.writer import run_title

    path = config.output_dir / "results.json"
    return run_title(read_json(path) if path.is_file() else {"model_name": config.model_name})


def step_report(config):
    from .evaluate.verdict import judge, terminal_lines
    from .report.writer import write_report
    from .settings import recorded

    path, published = write_report(config.output_dir, config.stale, recorded(config.output_dir))
    beside = [name for name in ("results.json", "accuracy.png", "throughput.png") if (path.parent / name).is_file()]
    print(f"report: {path} ({', '.join(beside)} beside it)")
    accuracy = config.output_dir / "accuracy.json"
    if accuracy.is_file():
        for line in terminal_lines(judge(read_json(accuracy))):
            print(line)
    return {"path": str(path), "published": published}


STEPS = {1: step_preprocess, 2: step_export, 3: step_convert, 4: step_infer, 5: step_accuracy, 6: step_performance,
         7: step_report}


def _other_tasks_commands(config, lines):
    """The recorded commands of tasks this run does not run (a zero-shot command names its folder)."""
    def task_of(line):
        return "zeroshot" if str(config.task_root("zeroshot")) in line or "openclip_zeroshot.py" in line else "retrieval"

    return [line for line in lines if task_of(line) not in config.tasks]


def preflight(config, steps):
    """Everything a run needs, checked before any step runs or anything is written: the steps, the
    NPU tools the chosen backend needs (all missing ones named at once), the data folders, and the
    weights — a tag not yet cached is downloaded now, not after step 1 has preprocessed everything."""
    from .model.loading import locate_weights, resolve_checkpoint

    unknown = [number for number in steps if number not in STEPS]
    if unknown:
        raise KitError(f"step {unknown[0]}: the steps are 1–7 ({', '.join(STEP_NAMES.values())})")
    backend, reason = resolve_backend(config.backend)
    npu_steps = sorted({3, 4, 6} & set(steps))
    if backend == "ascend" and npu_steps:
        missing = ascend_tools_missing(config.soc_version)
        if missing:
            where = f"BACKEND={config.backend} needs the NPU tools for steps {','.join(map(str, npu_steps))}"
            raise missing_tools_error([tool + (" (or SOC_VERSION)" if tool == "npu-smi" else "") for tool in missing],
                                      f"{where}, but")
    if 1 in steps:
        _check_data(config)
    # the steps that load the weights: export, the PyTorch reference, the profile's FLOP count
    loads_model = 2 in steps or (config.reference and {4, 6} & set(steps)) or (config.profile and 6 in steps)
    (resolve_checkpoint if loads_model else locate_weights)(config.model_name, config.pretrained)
    return backend, reason


def _check_data(config):
    """The data folders step 1 reads, read as step 1 reads them: a layout problem stops the run before it starts."""
    from .data.dataset import Problems, read_dataset
    from .evaluate.zeroshot import load_set

    if "retrieval" in config.tasks and config.data_dir is not None:
        read_dataset(Path(config.data_dir), config.dataset, Problems(config.on_error))
    if "zeroshot" in config.tasks and config.zeroshot_dir is not None:
        load_set(config.zeroshot_dir, config.zeroshot_dataset, config.classnames, config.templates)


def run_steps(config, steps=tuple(STEPS)):
    """Run the numbered steps in order; returns {step name: its result}, also in ``results.json``; the
    run's settings are kept in ``settings.json`` once a step has finished with them."""
    from .settings import record

    backend, reason = preflight(config, steps)
    print(f"backend: {backend} ({reason})" + (" + PyTorch reference" if config.reference else ""))
    results_path = config.output_dir / "results.json"
    results = read_json(results_path) if results_path.is_file() else {}
    results.update({"model_name": config.model_name, "pretrained": config.pretrained,
                    "random_weights": config.random_weights, "backend": backend, "python": sys.executable})
    commands = results.setdefault("commands", {})
    write_json(results_path, results)  # what the run is, before any step reads it
    for number in steps:
        print(f"=== step {number}: {STEP_NAMES[number]} ===")
        first, start = len(config.commands), time.perf_counter()
        result = STEPS[number](config)
        if number in PER_TASK_STEPS and isinstance(results.get(STEP_NAMES[number]), dict):
            result = {**results[STEP_NAMES[number]], **result}  # another task's entry from an earlier run stays
        results[STEP_NAMES[number]] = result
        commands[STEP_NAMES[number]] = (_other_tasks_commands(config, commands.get(STEP_NAMES[number], []))
                                        if number in PER_TASK_STEPS else []) + config.commands[first:]
        results.setdefault("seconds", {})[STEP_NAMES[number]] = round(time.perf_counter() - start, 2)
        write_json(results_path, results)
        record(config, [number])
    return results

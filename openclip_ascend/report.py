"""``report.md``: the accuracy and speed tables, the plot, the machine and software, and the exact
commands — what a user pastes into their model README."""

import os
import platform
from importlib import metadata
from pathlib import Path

from .files import read_json, write_text
from .postprocess import failed_checks
from .published import published_accuracy, published_throughput
from .runner import NOISY_CV, NOISY_TAIL
from .tables import (comparison_table, markdown_table, noisy_cells, recall_table, throughput_table, tie_footnotes,
                     zeroshot_table)

PACKAGES = ("torch", "open_clip_torch", "onnx", "onnxruntime", "numpy", "Pillow", "torch_npu", "ais_bench",
            "aclruntime")
PUBLISHED_KEYS = {"retrieval": ("image_retrieval_recall@5", "text_retrieval_recall@5"),
                  "zeroshot": ("acc1", "acc5", "mean_per_class_recall")}


def machine():
    """CPU model, cores, memory, OS and, on an Ascend host, the CANN version."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.lower().startswith("model name")]
        cpu = names[0] if names else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kb = int(meminfo.read_text().split()[1])
        memory = f"{total_kb / 2**20:.0f} GiB"
    info = {"os": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "memory": memory,
            "python": platform.python_version()}
    toolkit = Path(os.environ.get("ASCEND_TOOLKIT_HOME", "/usr/local/Ascend/ascend-toolkit/latest"))
    for version_file in (toolkit / "version.cfg", toolkit / "compiler" / "version.info"):
        if version_file.is_file():
            info["cann"] = version_file.read_text(errors="replace").strip().splitlines()[0]
            break
    return info


def versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _dataset(results, task):
    """The data set step 1 prepared for ``task`` (retrieval before tasks were recorded: flickr30k)."""
    recorded = ((results.get("preprocess") or {}).get(task) or {}).get("dataset")
    return recorded or ("flickr30k" if task == "retrieval" else "classification")


def _published_sections(results, run_dir):
    """Per task run: the figures published for this model on its data set beside this run's PyTorch and
    backends (at the smallest batch size), and the published throughput. Returns (lines, published)."""
    model, pretrained = results.get("model_name"), results.get("pretrained")
    runs = {"retrieval": run_dir / "accuracy.json", "zeroshot": run_dir / "zeroshot.json"}
    lines, found = [], []
    for task, path in runs.items():
        dataset = _dataset(results, task)
        entries = published_accuracy(model, pretrained, task, dataset) if path.is_file() else []
        if not entries:
            continue
        measured = {}
        for entry in read_json(path):  # the first (smallest) batch size of each backend
            measured.setdefault(entry["backend"], entry["metrics"])
        keys = [key for key in PUBLISHED_KEYS[task] if any(key in e["metrics"] for e in entries)]
        headers = ["figure"] + [f"published: {e['source']}" for e in entries] + [f"{b}, this run" for b in measured]
        rows = [[key] + [f"{e['metrics'][key]:.4f}" if key in e["metrics"] else "" for e in entries]
                + [f"{m[key]:.4f}" for m in measured.values()] for key in keys]
        lines += [f"### {task} on {dataset}: published figures (not measured here) beside this run", "",
                  markdown_table(headers, rows), "",
                  f"Published for {model} `{entries[0]['pretrained']}`"
                  + ("" if pretrained == entries[0]["pretrained"] else f"; this run's weights: `{pretrained}`")
                  + ". This run's columns: each backend at its smallest batch size.", ""]
        found += [{"task": task, "dataset": dataset, **entry} for entry in entries]
    for entry in published_throughput(model, pretrained):
        lines += [f"### Pure-inference fps published: {entry['source']} (not measured here)", "",
                  markdown_table(["BatchSize", "vision fps", "text fps"],
                                 [[batch, vision, text] for batch, (vision, text) in entry["fps"].items()]), ""]
        found.append({"task": "throughput", **entry})
    if lines:
        lines = ["## Published figures", ""] + lines
    return lines, found


def _stale_lines(stale):
    """The banner for outputs made before a ``--reconfigure`` changed the settings they depend on."""
    if not stale or stale["from_step"] >= 7:  # only the report itself was stale: it is being written now
        return []
    changed = ", ".join(f"{name} {old} → {new}" for name, (old, new) in stale["changed"].items())
    first = stale["from_step"]
    return [f"**Stale figures**: the settings changed with `--reconfigure` ({changed}); the outputs of steps "
            f"{first}–7 below were made with the earlier ones. Re-run `--steps {first}-7` to make them again.", ""]


def _failed_check_lines(accuracy, consequence):
    """The bold line for rows whose embeddings failed step 5's check (none when all passed)."""
    failed = failed_checks(accuracy)
    if not failed:
        return []
    return [f"**Accuracy check FAILED** for {', '.join(failed)}: degenerate embeddings (a collapsed model); "
            f"{consequence}.", ""]


def _zeroshot_section(accuracy, dataset):
    lines = [f"## Zero-shot classification ({dataset}; CLIP_benchmark's acc1, acc5, mean per-class recall)", ""]
    lines += _failed_check_lines(accuracy, "their figures below mean nothing")
    lines += [markdown_table(*zeroshot_table(accuracy)), ""]
    lines += [f"† {r['backend']} bs{r['batch_size']}: {r['tied_images']} images tie their true class with another, "
              "counted as misses" for r in accuracy if r.get("tied_images")]
    first = accuracy[0]
    return lines + [f"{first['images']} images, {first['classes']} classes, {first['templates']} prompt "
                           "templates per class; min cos compares each embedding with PyTorch's. One "
                           "CLIP_benchmark result file per row in `zeroshot/`.", ""]


def _precision_search_section(searched):
    """fp32, plain fp16 (simulated) and fp16 with the found keep set, per tower."""
    def r5(metrics):
        return f"{metrics['image_retrieval_recall@5']:.4f} / {metrics['text_retrieval_recall@5']:.4f}"

    rows = [[tower, r5(entry["fp32"]), r5(entry["fp16"]),
             r5(entry["kept"]) if entry["found"] else "not found", entry["nodes"],
             ", ".join(f"`{scope}`" for scope in entry["keep_scopes"]) or "—"] for tower, entry in searched.items()]
    return ["## fp16 precision search (CPU simulation of an fp16 OM)", "",
            markdown_table(["tower searched", "fp32 R@5 (image / text)", "fp16 R@5", "fp16 + keep set R@5",
                            "nodes kept in fp32", "scopes"], rows), "",
            "The other tower runs fp32 while one is searched. A keep set is the smallest found that brings recall@5 "
            f"within {next(iter(searched.values()))['recall_bound']:g} of fp32 (and every embedding to cosine ≥ "
            "0.99); step 3 compiles with it (`PRECISION=keep:FILE`). See `precision/` for every node's error.", ""]


def write_report(run_dir, stale=None):
    """``report.md`` from what the steps left in ``run_dir``; returns (path, the published figures shown).
    ``stale``: the run's stale steps after a ``--reconfigure`` (settings.stale), said at the top."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    sections = [f"# {results.get('model_name', 'model')} — accuracy and speed report", ""]
    sections += [f"Backend: **{results.get('backend')}**; weights: `{results.get('pretrained')}`.", ""]
    if results.get("random_weights"):
        sections += ["**Random weights** (`--pretrained none`): no figure in this report says anything about a "
                     "trained model's accuracy.", ""]
    sections += _stale_lines(stale)
    if (run_dir / "accuracy.json").is_file():
        accuracy = read_json(run_dir / "accuracy.json")
        sections += _failed_check_lines(accuracy, "their recall below means nothing")
        dataset = _dataset(results, "retrieval")
        sections += [f"## Accuracy ({dataset} retrieval, CLIP_benchmark's recall@k)", "",
                     markdown_table(*recall_table(accuracy)), ""]
        footnotes = tie_footnotes(accuracy)
        if footnotes:
            sections += footnotes + [""]
        headers, rows = comparison_table(accuracy)
        if rows:
            sections += ["### Against PyTorch", "", markdown_table(headers, rows), "",
                         "Cosine and max abs diff compare each output with PyTorch's for the same input."]
            if any(r["backend"] == "fp16-estimate" for r in accuracy):
                sections += ["`fp16-estimate` is an estimate, not a measurement: the ONNX graph with its weights and "
                             "every intermediate result rounded to fp16, run on the CPU — what an fp16 OM's accuracy "
                             "is likely to be before an NPU is at hand."]
            sections += [""]
    if (run_dir / "aipp_estimate.json").is_file():
        cost = read_json(run_dir / "aipp_estimate.json")
        rows = [[path, f"{cost[path]['image_retrieval_recall@5']:.4f}", f"{cost[path]['text_retrieval_recall@5']:.4f}"]
                for path in ("float", "aipp")]
        sections += ["## AIPP estimate (CPU emulation: uint8 input, normalisation in fp16 on the chip)", "",
                     markdown_table(["vision input", "image R@5", "text R@5"], rows), "",
                     f"Vision embeddings against the float path: min cosine "
                     f"{cost['vision_agreement']['min_cosine']:.6f}, max abs diff "
                     f"{cost['vision_agreement']['max_abs_diff']:.2e} over {cost['images']} images; the graph runs "
                     "fp32 in both, so this is AIPP's cost alone. An estimate, not a measurement.", ""]
    if (run_dir / "zeroshot.json").is_file():
        sections += _zeroshot_section(read_json(run_dir / "zeroshot.json"), _dataset(results, "zeroshot"))
    searched = (read_json(run_dir / "export.json").get("precision_search")
                if (run_dir / "export.json").is_file() else None)
    if searched:
        sections += _precision_search_section(searched)
    if (run_dir / "performance.json").is_file():
        performance = read_json(run_dir / "performance.json")
        sections += ["## Throughput (pure inference, as ais_bench measures it)", "",
                     f"fps = 1000 × batch / mean compute ms over {performance['loops']} runs after a dropped warm-up.", ""]
        for warning in performance.get("npu_warnings", []):
            sections += [f"**Measured on a busy NPU, figures unreliable**: {warning}.", ""]
        spreads = performance.get("spread", {})
        for backend, by_batch in performance["throughput"].items():
            noisy = noisy_cells({int(batch): towers for batch, towers in spreads.get(backend, {}).items()})
            table = throughput_table({int(batch): row for batch, row in by_batch.items()}, noisy)
            sections += [f"### {backend}", "", markdown_table(*table), ""]
        noisy_rows = [[backend, batch, tower, f"{s['cv']:.0%}", f"{s['p99_over_median']:.1f}×"]
                      for backend, by_batch in spreads.items() for batch, towers in by_batch.items()
                      for tower, s in towers.items() if s["noisy"]]
        if noisy_rows:
            sections += [f"**Noisy figures** (marked `(noisy)`): their runs varied by more than {NOISY_CV:.0%} (coefficient "
                         f"of variation) or had a p99 over {NOISY_TAIL:g}× the median — other load on the machine while "
                         "timing. Re-run on an idle machine, raise `PERF_LOOPS`, or set `PERF_BUDGET` (seconds) to "
                         "measure again until stable.", "",
                         markdown_table(["backend", "batch size", "tower", "run-time CV", "p99 / median"], noisy_rows), ""]
        latency_rows = [[backend, batch, tower, f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}"]
                        for backend, by_batch in performance["latency_ms"].items()
                        for batch, towers in by_batch.items() for tower, lat in towers.items()]
        sections += ["### Latency per run (ms)", "",
                     markdown_table(["backend", "batch size", "tower", "p50", "p90", "p99"], latency_rows), ""]
        device_rows = [[backend, batch, tower, device, f"{fps:.1f}"]
                       for backend, by_batch in performance.get("per_device", {}).items()
                       for batch, towers in by_batch.items() for tower, devices in towers.items()
                       for device, fps in devices.items()]
        if device_rows:
            sections += ["### Per device (the throughput above is their sum, as ais_bench's summary throughput)", "",
                         markdown_table(["backend", "batch size", "tower", "device", "fps"], device_rows), ""]
        if (run_dir / "throughput.png").is_file():
            sections += ["![throughput against batch size](throughput.png)", ""]
        if performance.get("profile"):
            from .npu_profile import profile_section

            sections += profile_section(performance["profile"], performance.get("peak_tflops"))
        if performance.get("variants"):
            from .sweep import sweep_section

            sections += sweep_section(performance["variants"])
    infer = results.get("infer") or {}
    if infer:
        rows = [[task, backend, batch, tower, f"{v['compute_fps']:.1f}", f"{v['e2e_fps']:.1f}",
                 f"{v['tokens_per_sample']:.1f}" if "tokens_per_sample" in v else ""]
                for task, by_backend in infer.items() for backend, by_batch in by_backend.items()
                for batch, towers in by_batch.items() for tower, v in towers.items()]
        sections += ["### End to end over the data set (reading inputs and writing outputs included)", "",
                     markdown_table(["task", "backend", "batch size", "tower", "compute fps", "end-to-end fps",
                                     "text tokens / input"], rows), ""]
        if any(row[-1] for row in rows):
            sections += ["Text tokens / input: where shown, captions or prompts were sorted by length and each batch "
                         "ran only as far as its longest (exact: the embedding depends only on the tokens up to the "
                         "EOT); elsewhere every one ran at the full context. The pure-inference tables above run the "
                         "full context.", ""]
    seconds = results.get("seconds") or {}
    if seconds:
        sections += ["## Time per step (seconds, this run)", "",
                     markdown_table(["step", "seconds"], [[step, f"{value:.1f}"] for step, value in seconds.items()]
                                    + [["total", f"{sum(seconds.values()):.1f}"]]), ""]
    published_lines, published = _published_sections(results, run_dir)
    sections += published_lines
    machine_info = machine()
    sections += ["## Machine and software", "",
                 markdown_table(["item", "value"], [[k, v] for k, v in {**machine_info, **versions()}.items()]), ""]
    commands = results.get("commands") or {}
    if commands:
        sections += ["## Commands", "", "```bash"]
        for step, lines in commands.items():
            sections += [f"# {step}"] + lines
        sections += ["```", ""]
    path = run_dir / "report.md"
    write_text(path, "\n".join(sections))
    return path, published

"""``report.md``: the verdict first (per backend, PASS or FAIL against PyTorch and the published figures),
then what was run, the accuracy and throughput tables (identical rows collapsed, ties and noise said once),
the plots, and in an appendix the long tables, the machine and software and the exact commands — what a user
pastes into their model README."""

import os
import platform
import time
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..agreement import cosine_text
from ..evaluate.postprocess import failed_checks
from ..evaluate.verdict import MIN_COSINE, RECALL_BOUND, against_published, describe_backend, judge, span
from ..files import read_json, write_text
from ..markdown import markdown_table
from ..run.runner import NOISY_CV, NOISY_TAIL
from .published import published_accuracy, published_throughput
from .tables import (
    collapse_batches,
    comparison_table,
    noisy_cells,
    recall_table,
    tie_summary,
    tower_throughput_table,
    zeroshot_table,
)

PACKAGES = ("torch", "open_clip_torch", "onnx", "onnxruntime", "numpy", "Pillow", "torch_npu", "ais_bench",
            "aclruntime")
PUBLISHED_ZEROSHOT_KEYS = ("acc1", "acc5", "mean_per_class_recall")


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
    from ..ascend.npu_smi import cann_version

    toolkit = os.environ.get("ASCEND_TOOLKIT_HOME") or os.environ.get("ASCEND_HOME_PATH") or \
        "/usr/local/Ascend/ascend-toolkit/latest"
    version, _ = cann_version(toolkit)
    if version:
        info["cann"] = version
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
    """The data set step 1 prepared for ``task``, named for what it is: the generated sample has flickr30k's
    layout, not its images, so no figure published for flickr30k applies to it (retrieval before tasks were
    recorded: flickr30k)."""
    prepared = (results.get("preprocess") or {}).get(task) or {}
    if prepared.get("generated"):
        return "generated flickr-style sample"
    return prepared.get("dataset") or ("flickr30k" if task == "retrieval" else "classification")


def _published(results, run_dir):
    """{task: published entries that apply to this run's model, weights, data set and its size} and the published
    throughput entries (figures others measured: shown beside this run's, never as its own)."""
    model, pretrained = results.get("model_name"), results.get("pretrained")
    runs = {"retrieval": run_dir / "accuracy.json", "zeroshot": run_dir / "zeroshot.json"}
    prepared = results.get("preprocess") or {}
    accuracy = {task: published_accuracy(model, pretrained, task, _dataset(results, task),
                                         (prepared.get(task) or {}).get("images"))
                for task, path in runs.items() if path.is_file()}
    return {task: entries for task, entries in accuracy.items() if entries}, published_throughput(model, pretrained)


def _published_zeroshot_lines(entries, accuracy):
    keys = [key for key in PUBLISHED_ZEROSHOT_KEYS if any(key in e["metrics"] for e in entries)]
    measured = {}  # backend → key → (low, high) over its batch sizes, shown as the verdict shows a range
    for entry in accuracy:
        ranges = measured.setdefault(entry["backend"], {})
        for key in keys:
            low, high = ranges.get(key, (1.0, 0.0))
            ranges[key] = (min(low, entry["metrics"][key]), max(high, entry["metrics"][key]))
    headers = ["figure"] + [f"published: {e['source']}" for e in entries] + [f"{b}, this run" for b in measured]
    rows = [[key] + [f"{e['metrics'][key]:.4f}" if key in e["metrics"] else "" for e in entries]
            + [span(ranges[key]) for ranges in measured.values()] for key in keys]
    return [markdown_table(headers, rows), ""]


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


def _zeroshot_section(accuracy, dataset, published):
    lines = [f"## Zero-shot classification on the {dataset}", "", "CLIP_benchmark's acc1, acc5 and mean per-class "
             "recall.", ""]
    lines += _failed_check_lines(accuracy, "their figures below mean nothing")
    lines += [markdown_table(*collapse_batches(*zeroshot_table(accuracy))), ""]
    tied = [r for r in accuracy if r.get("tied_images")]
    if tied:
        lines += [f"† images that tie their true class with another are counted as misses: "
                  f"{max(r['tied_images'] for r in tied)} at most ({', '.join(sorted({r['backend'] for r in tied}))}).",
                  ""]
    first = accuracy[0]
    lines += [f"{first['images']} images, {first['classes']} classes, {first['templates']} prompt templates per class; "
              "min cos compares each embedding with PyTorch's. One CLIP_benchmark result file per row in `zeroshot/`.",
              ""]
    if published:
        lines += ["Published (not measured here) beside this run:", ""] + _published_zeroshot_lines(published, accuracy)
    return lines


def _precision_search_section(searched):
    """fp32, plain fp16 (simulated) and fp16 with the found keep set, per tower."""
    def r5(metrics):
        return f"{metrics['image_retrieval_recall@5']:.4f} / {metrics['text_retrieval_recall@5']:.4f}"

    bounds = next(iter(searched.values()))  # every tower is searched with the same bounds
    rows = [[tower, r5(entry["fp32"]), r5(entry["fp16"]),
             r5(entry["kept"]) if entry["found"] else "not found", entry["nodes"],
             ", ".join(f"`{scope}`" for scope in entry["keep_scopes"]) or "—"] for tower, entry in searched.items()]
    return ["## fp16 precision search (CPU simulation of an fp16 OM)", "",
            markdown_table(["tower searched", "fp32 R@5 (image / text)", "fp16 R@5", "fp16 + keep set R@5",
                            "nodes kept in fp32", "scopes"], rows), "",
            "The other tower runs fp32 while one is searched. A keep set is the smallest found that brings recall@5 "
            f"within {bounds['recall_bound']:g} of fp32 (and every embedding to cosine ≥ "
            f"{bounds.get('min_cosine_bound', MIN_COSINE):g}); step 3 compiles with it (`PRECISION=keep:FILE`). See `precision/` for every node's error.", ""]


def describe_data(results, task="retrieval"):
    """The data set a task ran on, named for what it is, with its counts."""
    prepared = (results.get("preprocess") or {}).get(task) or {}
    if task == "zeroshot":
        return (f"{prepared.get('dataset', 'classification')} ({prepared.get('images', '?')} images, "
                f"{prepared.get('classes', '?')} classes)")
    return f"{_dataset(results, task)} ({prepared.get('images', '?')} images, {prepared.get('captions', '?')} captions)"


def describe_device(results):
    """The chip and soc version for an NPU run, else the CPU the backends ran on."""
    if results.get("backend") == "ascend":
        soc = (results.get("convert") or {}).get("soc_version")
        return f"NPU {soc}" if soc else "NPU"
    return f"CPU: {machine()['cpu']}"


def run_title(results):
    return f"{results.get('model_name', 'model')} — {describe_device(results)} — {describe_data(results)}"


def _weights(results):
    pretrained = str(results.get("pretrained"))
    if results.get("random_weights"):
        return "**random weights** (`--pretrained none`)"
    if Path(pretrained).suffix in (".bin", ".pt", ".pth", ".safetensors"):
        return f"file `{Path(pretrained).name}`"
    return f"tag `{pretrained}`"


def _verdict_section(accuracy, soc_version, published):
    verdicts = judge(accuracy)
    rows = [[f"**{v['verdict']}**" if v["verdict"] in ("PASS", "FAIL") else v["verdict"], v["backend"],
             describe_backend(v["backend"], soc_version), span(v["recall"]["image_retrieval_recall@5"]),
             span(v["recall"]["text_retrieval_recall@5"]),
             "" if v["gap"] is None else f"{v['gap']:.4f}",  # nothing compared: no gap to show
             " / ".join(cosine_text(v["min_cosine"][t], 5) for t in ("vision", "text") if t in v["min_cosine"]),
             ", ".join(map(str, v["batch_sizes"]))] for v in verdicts]
    lines = ["## Verdict", "", markdown_table(["verdict", "backend", "what it is", "image R@5", "text R@5",
                                               "worst R@5 gap to PyTorch", "min cosine vision / text", "batch sizes"],
                                              rows), "",
             f"PASS: at every batch size, recall@5 both ways within {RECALL_BOUND:g} of PyTorch's on the same inputs "
             f"(or one query, where that is more), every embedding at cosine ≥ {MIN_COSINE:g} to PyTorch's, and no "
             "degenerate embeddings. A range is the figures over the batch sizes."]
    reasons = [f"{v['backend']}: {'; '.join(v['reasons'][:3])}" for v in verdicts if v["reasons"]]
    if reasons:
        lines += ["", "Why FAIL — " + " · ".join(reasons)]
    for row in against_published(accuracy, published):
        figures = ", ".join(f"{key.split('_')[0]} R@5 {mine:.4f} (published {theirs:.4f})"
                            for key, (theirs, mine) in row["figures"].items())
        lines += ["", f"Against the published figure of {row['source']} (not measured here): {row['backend']} "
                      f"**{row['verdict']}** — {figures}"]
    return lines + [""]


def _what_was_run(results, settings, device):
    rows = [["model", f"{results.get('model_name')}, weights {_weights(results)}"],
            ["data", describe_data(results)]]
    if "zeroshot" in (results.get("preprocess") or {}):
        rows.append(["zero-shot data", describe_data(results, "zeroshot")])
    rows += [["device", device], ["date", time.strftime("%Y-%m-%d %H:%M")],
             ["kit", f"openclip-ascend {__version__}"]]
    named = [f"{env}={value}" for env, value in settings if env in HEADLINE_SETTINGS]
    if named:
        rows.append(["settings", ", ".join(named) + " (all of them in the appendix)"])
    return ["## What was run", "", markdown_table(["", ""], rows), ""]


HEADLINE_SETTINGS = ("BATCH_SIZES", "PRECISION", "DYNAMIC_BATCH", "DEVICES", "INT8", "FP16_ESTIMATE", "TEXT_LENGTHS",
                     "OPSET", "PERF_LOOPS")


def _accuracy_section(accuracy, dataset, run_dir):
    lines = [f"## Accuracy: retrieval on the {dataset}", "", "Recall@k as CLIP_benchmark defines it; rows that "
             "agree at several batch sizes are one row here, every batch size's row is in the appendix.", ""]
    lines += _failed_check_lines(accuracy, "their recall below means nothing")
    lines += [markdown_table(*collapse_batches(*recall_table(accuracy))), ""]
    lines += tie_summary(accuracy)
    headers, rows = comparison_table(accuracy)
    if rows:
        lines += ["### Against PyTorch", "", markdown_table(*collapse_batches(headers, rows)), "",
                  "Cosine and max abs diff compare each output with PyTorch's for the same input."]
        if any(r["backend"] == "fp16-estimate" for r in accuracy):
            lines += ["`fp16-estimate` is an estimate, not a measurement: the ONNX graph with its weights and every "
                      "intermediate result rounded to fp16, run on the CPU — what an fp16 OM's accuracy is likely to "
                      "be before an NPU is at hand."]
        lines += [""]
    if (run_dir / "accuracy.png").is_file():
        lines += ["![recall@5 and min cosine against PyTorch per backend and batch size](accuracy.png)", ""]
    return lines


def _throughput_section(performance, published_fps, run_dir):
    lines = ["## Throughput (pure inference, as ais_bench measures it)", "",
             f"fps = 1000 × batch / mean compute ms over {performance['loops']} runs after a dropped warm-up.", ""]
    for warning in performance.get("npu_warnings", []):
        lines += [f"**Measured on a busy NPU, figures unreliable**: {warning}.", ""]
    spreads = performance.get("spread", {})
    noisy = {backend: noisy_cells({int(b): towers for b, towers in by_batch.items()})
             for backend, by_batch in spreads.items()}
    count = sum(len(cells) for cells in noisy.values())
    total = sum(len(towers) for by_batch in spreads.values() for towers in by_batch.values())
    if count:
        lines += [f"**Noisy timings**: {count} of {total} figures varied by more than {NOISY_CV:.0%} from run to run "
                  f"(coefficient of variation) or had a p99 over {NOISY_TAIL:g}× the median — other load while timing. "
                  "They are marked `(noisy)` and never marked best; re-run on an idle machine, raise `PERF_LOOPS`, or "
                  "set `PERF_BUDGET` (seconds) to measure again until stable.", ""]
    throughput = {backend: {int(b): row for b, row in by_batch.items()}
                  for backend, by_batch in performance["throughput"].items()}
    for tower in ("vision", "text"):
        headers, rows = tower_throughput_table(throughput, tower, noisy)
        if rows:
            lines += [f"### {tower} tower (samples / s)", "", markdown_table(headers, rows), ""]
    if (run_dir / "throughput.png").is_file():
        lines += ["![throughput against batch size](throughput.png)", ""]
    lines += _published_fps_lines(published_fps)
    if performance.get("profile"):
        lines += profile_section(performance["profile"], performance.get("peak_tflops"))
    if performance.get("variants"):
        from .sweep import sweep_section

        lines += sweep_section(performance["variants"])
    return lines


def _published_fps_lines(published_fps):
    return [line for entry in published_fps for line in (
        f"Published pure-inference fps, {entry['source']} (not measured here):", "",
        markdown_table(["BatchSize", "vision fps", "text fps"],
                       [[batch, vision, text] for batch, (vision, text) in entry["fps"].items()]), "")]


def _appendix(run_dir, results, accuracy, performance, settings):
    lines = ["## Appendix", ""]
    if accuracy:
        lines += ["### Recall@1/5/10, every backend and batch size", "", markdown_table(*recall_table(accuracy)), ""]
    if performance:
        spreads = performance.get("spread", {})
        rows = [[backend, batch, tower, f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}",
                 f"{spreads[backend][batch][tower]['cv']:.0%}" if spreads.get(backend, {}).get(batch) else "",
                 "noisy" if spreads.get(backend, {}).get(batch, {}).get(tower, {}).get("noisy") else ""]
                for backend, by_batch in performance["latency_ms"].items()
                for batch, towers in by_batch.items() for tower, lat in towers.items()]
        lines += ["### Latency per run (ms) and its spread", "",
                  markdown_table(["backend", "batch size", "tower", "p50", "p90", "p99", "CV", ""], rows), ""]
        device_rows = [[backend, batch, tower, device, f"{fps:.1f}"]
                       for backend, by_batch in performance.get("per_device", {}).items()
                       for batch, towers in by_batch.items() for tower, devices in towers.items()
                       for device, fps in devices.items()]
        if device_rows:
            lines += ["### Per device (the throughput above is their sum, as ais_bench's summary throughput)", "",
                      markdown_table(["backend", "batch size", "tower", "device", "fps"], device_rows), ""]
    infer = results.get("infer") or {}
    if infer:
        rows = [[task, backend, batch, tower, f"{v['e2e_fps']:.1f}",
                 f"{v['tokens_per_sample']:.1f}" if "tokens_per_sample" in v else "full"]
                for task, by_backend in infer.items() for backend, by_batch in by_backend.items()
                for batch, towers in by_batch.items() for tower, v in towers.items()]
        lines += ["### Step 4 over the whole data set (samples / s, reading inputs and writing outputs included)", "",
                  markdown_table(["task", "backend", "batch size", "tower", "samples / s", "text tokens / input"],
                                 rows), "",
                  "Text tokens / input: captions or prompts sorted by length, each batch run only as far as its longest "
                  "(exact: an embedding depends only on its tokens up to the EOT); `full`: every one at the full "
                  "context, as the pure-inference figures above.", ""]
    seconds = results.get("seconds") or {}
    if seconds:
        lines += ["### Time per step (seconds)", "",
                  markdown_table(["step", "seconds"], [[step, f"{value:.1f}"] for step, value in seconds.items()]
                                 + [["total", f"{sum(seconds.values()):.1f}"]]), ""]
    lines += ["### Machine and software", "",
              markdown_table(["item", "value"], [[k, v] for k, v in {**machine(), **versions()}.items()]), ""]
    if settings:
        lines += ["### Settings (settings.json; unset ones left out)", "",
                  markdown_table(["variable", "value"], [list(row) for row in settings]), ""]
    commands = {step: recorded for step, recorded in (results.get("commands") or {}).items() if recorded}
    if commands:
        lines += ["### Commands", "", "As the steps ran them, from the run folder, with `KIT` the kit's folder:", "",
                  "```bash", f"cd {Path(run_dir).resolve()}", f"KIT={KIT_ROOT}"]
        for step, recorded in commands.items():
            lines += [f"# {step}"] + [relative_command(line, run_dir, results.get("python")) for line in recorded]
        lines += ["```", ""]
    return lines


KIT_ROOT = Path(__file__).resolve().parents[2]  # where the top-level scripts (openclip_*.py, convert/) are


def relative_command(line, run_dir, python=None):
    """A recorded command as it runs from the run folder: paths under it relative (however the folder was
    given), the kit's scripts under ``$KIT``, and the interpreter as run instead of a bare ``python``."""
    for folder in dict.fromkeys((str(Path(run_dir).resolve()), str(Path(run_dir)))):
        line = line.replace(folder + "/", "").replace(folder, ".")
    if line.startswith("python "):
        script = line.split()[1]
        line = f"{python or 'python'} $KIT/{script}{line[len('python ' + script):]}"
    return line.replace(str(KIT_ROOT), "$KIT")


def write_report(run_dir, stale=None, settings=()):
    """``report.md`` from what the steps left in ``run_dir``; returns (path, the published figures shown).
    ``stale``: the run's stale steps after a ``--reconfigure`` (settings.stale), said at the top; ``settings``:
    the run's (variable, value) pairs (settings.recorded), shown as what was run."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    accuracy = read_json(run_dir / "accuracy.json") if (run_dir / "accuracy.json").is_file() else None
    performance = read_json(run_dir / "performance.json") if (run_dir / "performance.json").is_file() else None
    published, published_fps = _published(results, run_dir)
    device = describe_device(results)
    sections = [f"# {results.get('model_name', 'model')} — accuracy and speed report", ""]
    if results.get("random_weights"):
        sections += ["**Random weights** (`--pretrained none`): no figure in this report says anything about a "
                     "trained model's accuracy.", ""]
    sections += _stale_lines(stale)
    if accuracy:
        soc_version = (results.get("convert") or {}).get("soc_version")
        sections += _verdict_section(accuracy, soc_version, published.get("retrieval", []))
    sections += _what_was_run(results, settings, device)
    if accuracy:
        sections += _accuracy_section(accuracy, describe_data(results), run_dir)
    if (run_dir / "aipp_estimate.json").is_file():
        cost = read_json(run_dir / "aipp_estimate.json")
        rows = [[path, f"{cost[path]['image_retrieval_recall@5']:.4f}", f"{cost[path]['text_retrieval_recall@5']:.4f}"]
                for path in ("float", "aipp")]
        sections += ["## AIPP estimate (CPU emulation: uint8 input, normalisation in fp16 on the chip)", "",
                     markdown_table(["vision input", "image R@5", "text R@5"], rows), "",
                     f"Vision embeddings against the float path: min cosine "
                     f"{cosine_text(cost['vision_agreement']['min_cosine'])}, max abs diff "
                     f"{cost['vision_agreement']['max_abs_diff']:.2e} over {cost['images']} images; the graph runs "
                     "fp32 in both, so this is AIPP's cost alone. An estimate, not a measurement.", ""]
    if (run_dir / "zeroshot.json").is_file():
        sections += _zeroshot_section(read_json(run_dir / "zeroshot.json"), describe_data(results, "zeroshot"),
                                      published.get("zeroshot"))
    searched = (read_json(run_dir / "export.json").get("precision_search")
                if (run_dir / "export.json").is_file() else None)
    if searched:
        sections += _precision_search_section(searched)
    if performance:
        sections += _throughput_section(performance, published_fps, run_dir)
    elif published_fps:
        sections += ["## Throughput", "", "Not measured in this run (step 6)."] + [""] + _published_fps_lines(published_fps)
    sections += _appendix(run_dir, results, accuracy, performance, settings)
    path = run_dir / "report.md"
    write_text(path, "\n".join(sections))
    shown = [{"task": task, "dataset": _dataset(results, task), **entry}
             for task, entries in published.items() for entry in entries]
    return path, shown + [{"task": "throughput", **entry} for entry in published_fps]


def profile_section(records, peak_tflops=None):
    """report.md's lines for the profiles."""
    from ..ascend.profile import AI_CPU

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

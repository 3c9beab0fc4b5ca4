"""The verdict a run opens with: per backend, PASS or FAIL against PyTorch on the same inputs — and against the
figures published for the model, where some apply — in a few lines a user can trust at a glance.

A backend PASSES when, at every batch size it ran, its embeddings are not degenerate, recall@5 both ways is
within ``RECALL_BOUND`` of PyTorch's (or within one query, where one query is more: 0.001 on flickr30k's 1000
images), and every embedding is at cosine ≥ ``MIN_COSINE`` to PyTorch's for the same input. The same bounds
choose the sweep's variant. Without the PyTorch reference (``REFERENCE=0``) nothing is judged, and it says so.
"""

from ..agreement import cosine_text

RECALL_BOUND = 0.002
MIN_COSINE = 0.99
RECALL_KEYS = ("image_retrieval_recall@5", "text_retrieval_recall@5")
REFERENCE = "torch"
PASS, FAIL, NOT_JUDGED = "PASS", "FAIL", "not judged"
# what each backend is, for a reader who did not choose it
BACKEND_NAMES = {"torch": "PyTorch eager on the CPU (the reference)", "onnxruntime": "ONNX Runtime on the CPU (the "
                 "fallback where there is no NPU)", "onnxruntime-int8": "ONNX Runtime int8 on the CPU",
                 "onnxruntime-cuda": "ONNX Runtime on CUDA", "fp16-estimate": "fp16 estimate: the ONNX graph with fp16 "
                 "rounding on the CPU (an estimate, not an NPU)"}


def describe_backend(backend, soc_version=None):
    if backend == "ascend":
        return f"OM on the NPU ({soc_version})" if soc_version else "OM on the NPU"
    return BACKEND_NAMES.get(backend, backend)


def within(value, reference, queries):
    """Whether a recall figure is within the bound of the reference's: RECALL_BOUND, or one query."""
    return abs(value - reference) <= max(RECALL_BOUND, 1 / queries if queries else 0) + 1e-12


def _queries(entry, key):
    """How many queries a recall figure is over: captions for text→image, images for image→text."""
    return entry.get("captions" if key.startswith("image") else "images") or 0


def judge(accuracy):
    """[{backend, verdict, batch_sizes, recall {key: (low, high)}, gap, min_cosine {tower}, reasons}] for
    step 5's entries (``accuracy.json``), in their backend order. ``gap`` is the largest recall@5 difference
    to PyTorch, None where nothing was compared (a 0 there would read as a perfect match)."""
    reference = {e["batch_size"]: e for e in accuracy if e["backend"] == REFERENCE}
    verdicts = {}
    for entry in accuracy:
        record = verdicts.setdefault(entry["backend"], {"backend": entry["backend"], "batch_sizes": [], "recall": {},
                                                        "gap": None, "min_cosine": {}, "reasons": [],
                                                        "judged": entry["backend"] != REFERENCE})
        batch = entry["batch_size"]
        record["batch_sizes"].append(batch)
        for key in RECALL_KEYS:
            low, high = record["recall"].get(key, (1.0, 0.0))
            value = entry["metrics"][key]
            record["recall"][key] = (min(low, value), max(high, value))
        if entry.get("check") == "failed":
            record["reasons"].append(f"bs{batch}: degenerate embeddings")
        if entry["backend"] == REFERENCE:
            continue
        base = reference.get(batch)
        if base is None:
            record["judged"] = False
            continue
        for key in RECALL_KEYS:
            gap = entry["metrics"][key] - base["metrics"][key]
            record["gap"] = max(record["gap"] or 0.0, abs(gap))
            if not within(entry["metrics"][key], base["metrics"][key], _queries(entry, key)):
                record["reasons"].append(f"bs{batch}: {key.split('_')[0]} R@5 {gap:+.4f} against PyTorch")
        for tower, agreement in (entry.get("agreement") or {}).items():
            cosine = min(record["min_cosine"].get(tower, 1.0), agreement["min_cosine"])
            record["min_cosine"][tower] = cosine
            if agreement["min_cosine"] < MIN_COSINE:
                record["reasons"].append(f"bs{batch}: a {tower} embedding at cosine {cosine_text(agreement['min_cosine'], 4)}")
    for record in verdicts.values():
        record["reasons"] = _by_batch(record["reasons"])
        record["verdict"] = FAIL if record["reasons"] else (PASS if record["judged"] else NOT_JUDGED)
        if record["backend"] == REFERENCE and not record["reasons"]:
            record["verdict"] = "reference"
    return list(verdicts.values())


def _by_batch(reasons):
    """``bs1: x``, ``bs4: x`` → ``bs 1, 4: x``: one line per reason, the batch sizes it holds at."""
    grouped = {}
    for reason in reasons:
        batch, _, what = reason.partition(": ")
        grouped.setdefault(what, []).append(batch[2:])
    return [f"bs {', '.join(batches)}: {what}" for what, batches in grouped.items()]


def against_published(accuracy, entries):
    """[{source, backend, figures, verdict}]: each published recall figure beside this run's backends (worst batch
    size), PASS when within the same bound."""
    rows = []
    for published in entries:
        for backend in dict.fromkeys(e["backend"] for e in accuracy):
            runs = [e for e in accuracy if e["backend"] == backend]
            ok, figures = True, {}
            for key in RECALL_KEYS:
                if key not in published["metrics"]:
                    continue
                worst = max(runs, key=lambda e: abs(e["metrics"][key] - published["metrics"][key]))
                figures[key] = (published["metrics"][key], worst["metrics"][key])
                ok &= within(worst["metrics"][key], published["metrics"][key], _queries(worst, key))
            rows.append({"source": published["source"], "backend": backend, "figures": figures,
                         "verdict": PASS if ok else FAIL})
    return rows


def span(low_high):
    low, high = low_high
    return f"{low:.4f}" if abs(high - low) < 5e-5 else f"{low:.4f}–{high:.4f}"


def terminal_lines(verdicts):
    """Two or three lines for the end of a run: the verdict per backend."""
    judged = [v for v in verdicts if v["backend"] != REFERENCE]
    if not judged:
        return ["verdict: PyTorch only (no other backend ran)"]
    lines = []
    for v in judged:
        r5 = " / ".join(span(v["recall"][key]) for key in RECALL_KEYS)
        because = f": {v['reasons'][0]}" + (f" (+{len(v['reasons']) - 1} more)" if len(v["reasons"]) > 1 else "") \
            if v["reasons"] else ""
        lines.append(f"verdict {v['backend']}: {v['verdict']}{because} — recall@5 image / text {r5}")
    return lines

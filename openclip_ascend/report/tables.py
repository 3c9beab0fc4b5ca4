"""Result tables as Markdown (for a README), CSV (for a spreadsheet) and the terminal."""

from ..agreement import cosine_text
from ..evaluate.metrics import DEFAULT_RECALL_K

RECALL_COLUMNS = [(f"{direction}_retrieval_recall@{k}", f"{label} R@{k}")
                  for direction, label in (("image", "image"), ("text", "text")) for k in DEFAULT_RECALL_K]


def metrics_line(result, k=5):
    """The reference postprocess's line, ``Metrics: {'image_retrieval_recall@5': 0.9179999828338623, …}``:
    recall@5 both ways as torch float32 means widened to Python floats, as the reference prints them."""
    values = result.metrics_float32
    keys = (f"image_retrieval_recall@{k}", f"text_retrieval_recall@{k}")
    return "Metrics: " + str({key: values[key] for key in keys if key in values})


def recall_table(results):
    """results: [{"backend", "batch_size", "metrics", "ties", "check"}] → (headers, rows) with R@1/5/10 both
    ways; † marks a figure exact ties lowered (``tie_summary`` says by how much), and the last column
    is step 5's verdict on the embeddings."""
    columns = [(key, label) for key, label in RECALL_COLUMNS if any(key in r["metrics"] for r in results)]
    headers = ["backend", "batch size"] + [label for _, label in columns] + ["check"]
    rows = [[r["backend"], r.get("batch_size", "")]
            + [f"{r['metrics'][key]:.4f}" + ("†" if key in r.get("ties", {}) else "") for key, _ in columns]
            + [check_cell(r)] for r in results]
    return headers, rows


def check_cell(result):
    """Step 5's verdict on a row's embeddings, as its tables show it."""
    return "**FAILED**: degenerate embeddings" if result.get("check") == "failed" else "passed"


def tie_summary(results):
    """One † line per metric that exact ties lowered: which runs, how many queries at most, and the range of
    the figure had the ties gone to the positive."""
    lines = []
    for key in dict.fromkeys(key for r in results for key in r.get("ties", {})):
        touched = [r for r in results if key in r.get("ties", {})]
        runs = ", ".join(f"{backend} bs {', '.join(str(r['batch_size']) for r in touched if r['backend'] == backend)}"
                         for backend in dict.fromkeys(r["backend"] for r in touched))
        queries = max(r["ties"][key]["queries"] for r in touched)
        optimistic = sorted(r["ties"][key]["optimistic"] for r in touched)
        value = f"{optimistic[0]:.4f}" if optimistic[0] == optimistic[-1] else f"{optimistic[0]:.4f}–{optimistic[-1]:.4f}"
        lines.append(f"† {key}: exact ties touch up to {queries} queries ({runs}), counted against the positive; "
                     f"{value} if they went to it.")
    return lines + [""] if lines else []


def collapse_batches(headers, rows):
    """Rows that differ only in their batch size (the second column) as one row listing the batch sizes."""
    merged = {}
    for row in rows:
        key = (row[0],) + tuple(row[2:])
        if key in merged:
            merged[key][1] = f"{merged[key][1]}, {row[1]}"
        else:
            merged[key] = list(row)
    return headers, list(merged.values())


def _best_mark(value, best, noisy):
    """A figure is marked best only when it is the column's best and its timing is not noisy."""
    cell = "" if value is None else f"{value:.1f}"
    if value is not None and value == best and not noisy:
        cell = f"**{cell}**"
    return f"{cell} (noisy)" if noisy else cell


def tower_throughput_table(throughput, tower, noisy):
    """One tower's ModelZoo-style table: ``BatchSize | {backend} fps …`` (``throughput``: {backend: {batch:
    {tower: fps}}}, ``noisy``: {backend: (batch, tower) pairs}); each backend's best figure in bold unless noisy."""
    backends = [b for b, by_batch in throughput.items() if any(tower in row for row in by_batch.values())]
    batches = sorted({batch for b in backends for batch in throughput[b] if tower in throughput[b][batch]})
    best = {b: max(row[tower] for row in throughput[b].values() if tower in row) for b in backends}
    rows = [[batch] + [_best_mark(throughput[b].get(batch, {}).get(tower), best[b], (batch, tower) in noisy.get(b, ()))
                       for b in backends] for batch in batches]
    return ["BatchSize"] + [f"{b} fps" for b in backends], rows


def throughput_table(fps_by_batch, noisy=()):
    """ModelZoo's ``BatchSize | vision fps | text fps`` table; the best figure of each column in bold unless
    its runs varied too much (``noisy``: (batch, tower) pairs, marked ``(noisy)``)."""
    towers = [tower for tower in ("vision", "text") if any(tower in row for row in fps_by_batch.values())]
    best = {tower: max((row[tower] for row in fps_by_batch.values() if tower in row), default=None)
            for tower in towers}
    rows = [[batch] + [_best_mark(fps_by_batch[batch].get(tower), best[tower], (batch, tower) in noisy)
                       for tower in towers] for batch in sorted(fps_by_batch)]
    return ["BatchSize"] + [f"{tower} fps" for tower in towers], rows


def noisy_cells(spreads):
    """{batch: {tower: spread}} → the (batch, tower) pairs whose figure is noisy."""
    return {(batch, tower) for batch, towers in spreads.items() for tower, s in towers.items() if s["noisy"]}


def comparison_table(accuracy, reference="torch"):
    """recall@5 of every backend and batch size next to the reference's (the ModelZoo
    ``OM实测 | PyTorch实测`` table, extended), with embedding agreement per tower."""
    ref = {r["batch_size"]: r["metrics"] for r in accuracy if r["backend"] == reference}
    headers = ["backend", "batch size", "image R@5", f"{reference} image R@5", "text R@5", f"{reference} text R@5",
               "vision min cos", "text min cos", "max abs diff"]
    rows = []
    for r in accuracy:
        if r["backend"] == reference:
            continue
        base = ref.get(r["batch_size"], {})
        agreement = r.get("agreement", {})
        cosines = [cosine_text(agreement[t]["min_cosine"]) if t in agreement else "" for t in ("vision", "text")]
        worst = max((a["max_abs_diff"] for a in agreement.values()), default=None)
        rows.append([r["backend"], r["batch_size"],
                     f"{r['metrics']['image_retrieval_recall@5']:.4f}", _fmt(base.get("image_retrieval_recall@5")),
                     f"{r['metrics']['text_retrieval_recall@5']:.4f}", _fmt(base.get("text_retrieval_recall@5")),
                     *cosines, "" if worst is None else f"{worst:.2e}"])
    return headers, rows


def zeroshot_table(accuracy):
    """acc1, acc5 and mean per-class recall per backend and batch size; † where an image's true class tied
    another (counted as a miss), agreement with PyTorch and step 5's verdict on the embeddings."""
    headers = ["backend", "batch size", "acc1", "acc5", "mean per-class recall", "vision min cos", "text min cos",
               "check"]
    rows = []
    for r in accuracy:
        tie = "†" if r.get("tied_images") else ""
        agreement = r.get("agreement", {})
        rows.append([r["backend"], r["batch_size"]] + [f"{r['metrics'][key]:.4f}{tie}" for key in
                                                         ("acc1", "acc5", "mean_per_class_recall")]
                    + [cosine_text(agreement[t]["min_cosine"]) if t in agreement else "" for t in ("vision", "text")]
                    + [check_cell(r)])
    return headers, rows


def _fmt(value):
    return "" if value is None else f"{value:.4f}"



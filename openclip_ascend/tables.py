"""Result tables as Markdown (for a README), CSV (for a spreadsheet) and the terminal."""

import csv
import io

from .files import atomic_path, write_text

RECALL_COLUMNS = [(f"{direction}_retrieval_recall@{k}", f"{label} R@{k}")
                  for direction, label in (("image", "image"), ("text", "text")) for k in (1, 5, 10)]


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path, headers, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


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


def save_table(stem, headers, rows, title=""):
    """``stem.md`` and ``stem.csv``; returns the Markdown text."""
    text = (f"### {title}\n\n" if title else "") + markdown_table(headers, rows) + "\n"
    write_text(f"{stem}.md", text)
    write_csv(f"{stem}.csv", headers, [[str(cell).replace("*", "") for cell in row] for row in rows])
    return text


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
        cosines = [f"{agreement[t]['min_cosine']:.6f}" if t in agreement else "" for t in ("vision", "text")]
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
                    + [f"{agreement[t]['min_cosine']:.6f}" if t in agreement else "" for t in ("vision", "text")]
                    + [check_cell(r)])
    return headers, rows


def _fmt(value):
    return "" if value is None else f"{value:.4f}"


def _figure(panels, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), constrained_layout=True)
    figure.suptitle(title, fontsize=10)
    return plt, figure, axes


def _batch_axis(axis, batches):
    axis.set_xscale("log", base=2)
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.set_xlabel("batch size")
    axis.grid(True, alpha=0.3)


def _save(plt, figure, path):
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path


def plot_throughput(throughput, path, title="", noisy=None):
    """PNG of fps against batch size (``{backend: {batch: {tower: fps}}}``, integer batches) on a log2 axis: one
    panel per tower, one line per backend, both y axes from 0; noisy figures (``noisy``: {backend: (batch, tower)
    pairs}) drawn hollow and named in the legend."""
    noisy = noisy or {}
    plt, figure, axes = _figure(2, title)
    batches = sorted({b for by_batch in throughput.values() for b in by_batch})
    for axis, tower in zip(axes, ("vision", "text")):
        for backend, by_batch in throughput.items():
            points = sorted(b for b in by_batch if tower in by_batch[b])
            if not points:
                continue
            line, = axis.plot(points, [by_batch[b][tower] for b in points], marker="o", label=backend)
            hollow = [b for b in points if (b, tower) in noisy.get(backend, ())]
            if hollow:
                axis.plot(hollow, [by_batch[b][tower] for b in hollow], linestyle="none", marker="o", markersize=11,
                          markerfacecolor="white", markeredgecolor=line.get_color(), label=f"{backend}: noisy timing")
        _batch_axis(axis, batches)
        axis.set_ylim(bottom=0)
        axis.set_ylabel("samples / s")
        axis.set_title(f"{tower} tower")
        if axis.get_lines():
            axis.legend(fontsize=8)
    return _save(plt, figure, path)


def plot_accuracy(accuracy, path, title="", reference="torch"):
    """PNG of recall@5 (both ways) and the worst cosine to PyTorch per backend against batch size: what the
    verdict rests on, at a glance."""
    plt, figure, axes = _figure(2, title)
    batches = sorted({r["batch_size"] for r in accuracy})
    for backend in dict.fromkeys(r["backend"] for r in accuracy):
        rows = sorted((r for r in accuracy if r["backend"] == backend), key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in rows]
        for key, style in (("image_retrieval_recall@5", "-o"), ("text_retrieval_recall@5", "--s")):
            axes[0].plot(xs, [r["metrics"][key] for r in rows], style, label=f"{backend} {key.split('_')[0]}")
        agreed = [r for r in rows if r.get("agreement")]
        if backend != reference and agreed:
            axes[1].plot([r["batch_size"] for r in agreed],
                         [min(a["min_cosine"] for a in r["agreement"].values()) for r in agreed], "-o", label=backend)
    axes[0].set_ylabel("recall@5")
    axes[0].set_title("recall@5 (image and text retrieval)")
    axes[1].set_ylabel("worst cosine to PyTorch (both towers)")
    axes[1].set_title(f"embeddings against {reference}")
    for axis in axes:
        _batch_axis(axis, batches)
        if axis.get_lines():
            axis.legend(fontsize=7)
    return _save(plt, figure, path)

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
    ways; † marks a figure exact ties lowered (``tie_footnotes`` says by how much), and the last column
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


def tie_footnotes(results):
    """† lines: which figures exact ties lowered, for how many queries, and the optimistic value."""
    return [f"† {r['backend']} bs{r.get('batch_size', '')} {key}: exact ties touch {tie['queries']} queries and are "
            f"counted against the positive; {tie['optimistic']:.4f} if they went to it"
            for r in results for key, tie in r.get("ties", {}).items()]


def throughput_table(fps_by_batch, noisy=()):
    """ModelZoo's ``BatchSize | vision fps | text fps`` table; the best figure of each column in bold,
    figures whose runs varied too much (``noisy``: (batch, tower) pairs) marked ``(noisy)``."""
    towers = [tower for tower in ("vision", "text") if any(tower in row for row in fps_by_batch.values())]
    best = {tower: max((row[tower] for row in fps_by_batch.values() if tower in row), default=None)
            for tower in towers}
    rows = []
    for batch in sorted(fps_by_batch):
        row = [batch]
        for tower in towers:
            value = fps_by_batch[batch].get(tower)
            cell = "" if value is None else f"{value:.1f}"
            cell = f"**{cell}**" if value is not None and value == best[tower] else cell
            row.append(f"{cell} (noisy)" if (batch, tower) in noisy else cell)
        rows.append(row)
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


def plot_throughput(throughput, path):
    """PNG of fps against batch size (``{backend: {batch: {tower: fps}}}``, integer batches): one panel
    per tower, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    towers = ("vision", "text")
    figure, axes = plt.subplots(1, len(towers), figsize=(10, 4), constrained_layout=True)
    for axis, tower in zip(axes, towers):
        for backend, by_batch in throughput.items():
            batches = sorted(b for b in by_batch if tower in by_batch[b])
            if batches:
                axis.plot(batches, [by_batch[b][tower] for b in batches], marker="o", label=backend)
        axis.set_xscale("log", base=2)
        ticks = sorted({b for by_batch in throughput.values() for b in by_batch})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("batch size")
        axis.set_ylabel("samples / s")
        axis.set_title(f"{tower} tower")
        axis.grid(True, alpha=0.3)
        if axis.get_lines():
            axis.legend()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return path

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


def metrics_line(metrics, k=5):
    """The reference postprocess's line: ``Metrics: {'image_retrieval_recall@5': …, 'text_retrieval_recall@5': …}``."""
    keys = (f"image_retrieval_recall@{k}", f"text_retrieval_recall@{k}")
    return "Metrics: " + str({key: metrics[key] for key in keys if key in metrics})


def recall_table(results):
    """results: [{"backend", "batch_size", "metrics"}] → (headers, rows) with R@1/5/10 both ways."""
    columns = [(key, label) for key, label in RECALL_COLUMNS if any(key in r["metrics"] for r in results)]
    headers = ["backend", "batch size"] + [label for _, label in columns]
    rows = [[r["backend"], r.get("batch_size", "")] + [f"{r['metrics'][key]:.4f}" for key, _ in columns]
            for r in results]
    return headers, rows


def throughput_table(fps_by_batch):
    """ModelZoo's ``BatchSize | vision fps | text fps`` table; the best figure of each column in bold."""
    towers = [tower for tower in ("vision", "text") if any(tower in row for row in fps_by_batch.values())]
    best = {tower: max((row[tower] for row in fps_by_batch.values() if tower in row), default=None)
            for tower in towers}
    rows = []
    for batch in sorted(fps_by_batch):
        row = [batch]
        for tower in towers:
            value = fps_by_batch[batch].get(tower)
            cell = "" if value is None else f"{value:.1f}"
            row.append(f"**{cell}**" if value is not None and value == best[tower] else cell)
        rows.append(row)
    return ["BatchSize"] + [f"{tower} fps" for tower in towers], rows


def save_table(stem, headers, rows, title=""):
    """``stem.md`` and ``stem.csv``; returns the Markdown text."""
    text = (f"### {title}\n\n" if title else "") + markdown_table(headers, rows) + "\n"
    write_text(f"{stem}.md", text)
    write_csv(f"{stem}.csv", headers, [[str(cell).strip("*") for cell in row] for row in rows])
    return text

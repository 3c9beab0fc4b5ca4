"""Tables as every command writes them: Markdown for the terminal and report.md, CSV beside it."""

import csv
import io

from .files import atomic_path, write_text


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


def save_table(stem, headers, rows, title=""):
    """``stem.md`` and ``stem.csv``; returns the Markdown text."""
    text = (f"### {title}\n\n" if title else "") + markdown_table(headers, rows) + "\n"
    write_text(f"{stem}.md", text)
    write_csv(f"{stem}.csv", headers, [[str(cell).replace("*", "") for cell in row] for row in rows])
    return text

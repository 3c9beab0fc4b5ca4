"""Exact text-length trimming: run each caption only as far as its batch needs.

open_clip's CLIP text tower attends causally and pools the EOT token (the row's largest id), so its
embedding depends only on the tokens up to the EOT. A batch of token rows can therefore be cut to its
longest EOT + 1 columns (a dynamic-length graph) or to the shortest compiled length that holds it
(one static graph or OM per length bucket) with the same result up to float rounding. Captions are
sorted by length first, so a batch of 64 flickr30k captions needs ~17 of the 77 tokens, not 77.
"""

import bisect

from ..files import KitError

DYNAMIC_LENGTH = "dyn"  # a text graph whose sequence axis is dynamic (the CPU's exact length trimming)


def text_graph(length=None):
    """The graph name of a text length variant: ``text`` (the model's context, the reference contract),
    ``text_len32`` (a static 32-token graph, for a length-bucket OM), ``text_dynlen`` (any length)."""
    if length is None:
        return "text"
    return "text_dynlen" if length == DYNAMIC_LENGTH else f"text_len{int(length)}"


def base_tower(graph):
    """``vision`` or ``text`` for a graph name (``text_len32`` → ``text``)."""
    return graph.split("_", 1)[0]


def needed_tokens(tokens):
    """Columns a token array [..., L] needs: its last EOT position + 1."""
    return int(tokens.argmax(axis=-1).max()) + 1


def trimmed_width(tokens, widths=None):
    """The width a batch runs at: exactly what it needs (``widths`` None: any width), or the shortest
    of the sorted ``widths`` that holds it."""
    needed = needed_tokens(tokens)
    if widths is None:
        return needed
    return fitting_width(needed, widths)


def fitting_width(needed, widths):
    index = bisect.bisect_left(widths, needed)
    if index == len(widths):
        raise KitError(f"a caption needs {needed} tokens, the longest text model takes {widths[-1]}; include the "
                       "full-length text model among the length buckets")
    return widths[index]


def length_plan(samples, per_run, widths):
    """Batches of ``per_run`` sample indices in order of the tokens each needs (stable, so equal
    lengths keep the files' order), each with the width it runs at."""
    needed = [needed_tokens(sample) for sample in samples]
    order = sorted(range(len(samples)), key=needed.__getitem__)
    groups = [order[start:start + per_run] for start in range(0, len(order), per_run)]
    return [(group, fitting_width(max(needed[i] for i in group), widths)) for group in groups]


def token_widths(session):
    """The widths a text session takes when it can run shorter than its input files: a ``range`` for
    a dynamic sequence axis, a tuple of compiled lengths for length buckets; None: run as given."""
    return getattr(session, "token_widths", None)


def parse_text_lengths(text):
    """``"dyn,32"`` → ``["dyn", 32]`` for --text-lengths / TEXT_LENGTHS."""
    from ..cli import csv_ints

    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    numbers = [part for part in parts if part != DYNAMIC_LENGTH]
    return [DYNAMIC_LENGTH] * (DYNAMIC_LENGTH in parts) + (csv_ints(",".join(numbers), minimum=3) if numbers else [])

"""Recall@k for image–text retrieval as CLIP_benchmark's ``zeroshot_retrieval`` defines it, with ties
that can never flatter a model, and the checks that tell a collapsed model from a working one.

CLIP_benchmark scores ``text @ image.T``, takes ``topk`` per row and counts a hit when any positive
lies in it. Here the same hit is decided by rank: an item is in the top k of its row when fewer than
k items of that row score above its best positive. Without exact ties this is the same set as topk's.
With ties topk's choice is implementation-defined, so the headline figure (``metrics``) puts every
non-positive item that ties with the best positive ahead of it: it is never above what any topk
order gives. ``ties`` says which figures ties changed, how many queries they touch and what the
optimistic count (ties to the positive) would have been. A model whose outputs collapsed to one
vector ties everything, and its recall is then 0 instead of 1. Needs numpy only.
"""

from dataclasses import dataclass, field

import numpy as np

DEFAULT_RECALL_K = (1, 5, 10)
# Degenerate embeddings: more than this share of rows bit-identical to another row of the same tower
# (duplicate captions in a real data set are a few percent; the demo sample has 12 %), or scores whose
# spread across the whole matrix is below this (trained CLIP models: ~0.03–0.1; a collapsed one: ~0).
MAX_DUPLICATE_SHARE = 0.5
MIN_SCORE_STD = 1e-3


@dataclass
class RetrievalResult:
    metrics: dict  # headline recall@k: exact fractions, ties counted against the positive
    hits: dict  # key -> hits (numerator of metrics)
    queries: dict  # key -> queries (denominator)
    ties: dict = field(default_factory=dict)  # key -> {"queries": touched, "optimistic": value}
    problems: list = field(default_factory=list)  # why the embeddings look degenerate (empty: they do not)

    @property
    def metrics_float32(self):
        """The values the reference prints: torch float32 means widened to Python floats."""
        return {key: float(np.float32(self.hits[key]) / np.float32(self.queries[key])) for key in self.metrics}

    @property
    def degenerate(self):
        return bool(self.problems)


def normalised(x):
    """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _hit_bounds(rows, best, positives_near, ks, tolerance):
    """Per query and k: (pessimistic hit, optimistic hit). Items within ``tolerance`` of the best
    positive count against it (pessimistic) or not at all (optimistic); ``positives_near`` is how many
    of the query's own positives lie within that band (they never count against it)."""
    above = (rows > best[:, None] + tolerance).sum(axis=1)
    near = (np.abs(rows - best[:, None]) <= tolerance).sum(axis=1) - positives_near
    return {k: (above + near < k, above < k) for k in ks}


def _bounds(scores, text_to_image, ks, tolerance=0.0):
    """{key: (pessimistic hits, optimistic hits, valid queries)} for both retrieval directions."""
    num_texts, num_images = scores.shape
    own = scores[np.arange(num_texts), text_to_image]
    image_side = _hit_bounds(scores, own, 1, ks, tolerance)

    best_caption = np.full(num_images, -np.inf, dtype=scores.dtype)
    np.maximum.at(best_caption, text_to_image, own)
    near_best = np.abs(own - best_caption[text_to_image]) <= tolerance
    positives_near = np.bincount(text_to_image[near_best], minlength=num_images)
    # an image without captions has no positive: CLIP_benchmark's recall is 0/0 = nan > 0 -> False
    has_caption = np.bincount(text_to_image, minlength=num_images) > 0
    text_side = _hit_bounds(scores.T, best_caption, positives_near, ks, tolerance)

    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = image_side[k]
        pessimistic, optimistic = text_side[k]
        out[f"text_retrieval_recall@{k}"] = (pessimistic & has_caption, optimistic & has_caption)
    return out


def _scores(image_embeds, text_embeds):
    image_embeds = normalised(np.asarray(image_embeds, dtype=np.float32))
    text_embeds = normalised(np.asarray(text_embeds, dtype=np.float32))
    return text_embeds @ image_embeds.T  # (texts, images)


def duplicate_share(rows):
    """Share of rows that are bit-identical to another, earlier row."""
    rows = np.ascontiguousarray(rows)
    return 1.0 - len(np.unique(rows, axis=0)) / len(rows) if len(rows) else 0.0


def degeneracy(image_embeds, text_embeds, scores):
    """Reasons the embeddings cannot be a working model's (empty list: none found)."""
    problems = []
    for kind, rows in (("image", image_embeds), ("text", text_embeds)):
        share = duplicate_share(rows)
        if share > MAX_DUPLICATE_SHARE:
            problems.append(f"{share:.0%} of the {len(rows)} {kind} embeddings are identical copies of another")
    spread = float(scores.std())
    if spread < MIN_SCORE_STD:
        problems.append(f"the image–text scores barely differ (std {spread:.1e} < {MIN_SCORE_STD:g})")
    return problems


def evaluate_retrieval(image_embeds, text_embeds, text_to_image, ks=DEFAULT_RECALL_K):
    """Recall@k both ways (CLIP_benchmark's keys), the effect of exact ties, and degeneracy checks.

    ``text_to_image[t]`` is the index of caption t's image. Embeddings are L2-normalised here, as
    CLIP_benchmark does, so unnormalised inputs give the same numbers.
    """
    text_to_image = np.asarray(text_to_image)
    scores = _scores(image_embeds, text_embeds)
    result = RetrievalResult(metrics={}, hits={}, queries={})
    for key, (pessimistic, optimistic) in _bounds(scores, text_to_image, ks).items():
        queries = len(pessimistic)
        result.hits[key], result.queries[key] = int(pessimistic.sum()), queries
        result.metrics[key] = result.hits[key] / queries
        touched = int((pessimistic != optimistic).sum())
        if touched:
            result.ties[key] = {"queries": touched, "optimistic": float(optimistic.sum() / queries)}
    result.problems = degeneracy(np.asarray(image_embeds), np.asarray(text_embeds), scores)
    return result


def retrieval_metrics(image_embeds, text_embeds, text_to_image, ks=DEFAULT_RECALL_K):
    """The headline recall@k dict of ``evaluate_retrieval``."""
    return evaluate_retrieval(image_embeds, text_embeds, text_to_image, ks).metrics


def fragile_queries(image_embeds, text_embeds, text_to_image, ks=DEFAULT_RECALL_K, tolerance=1e-5):
    """Per key: how many queries' hit could flip if every score moved by up to ``tolerance`` — the
    recall difference two correct runtimes (other float rounding, another CPU) can show."""
    scores = _scores(image_embeds, text_embeds)
    return {key: int((pessimistic != optimistic).sum())
            for key, (pessimistic, optimistic) in _bounds(scores, np.asarray(text_to_image), ks, tolerance).items()}



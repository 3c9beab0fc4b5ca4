"""Recall@k for image–text retrieval, exactly as CLIP_benchmark's ``zeroshot_retrieval`` defines it.

CLIP_benchmark scores ``text @ image.T``, takes ``topk`` per row and counts a hit when any positive
lies in it. Here the same hit is decided by rank: an item is in the top k of its row when fewer
than k entries of that row score strictly higher than its best positive. Without ties this is the
same set as topk's; with exact ties CLIP_benchmark leaves the order to topk and so does not define
one, and this count takes the positive's side. Needs numpy only.
"""

import numpy as np

DEFAULT_RECALL_K = (1, 5, 10)


def _hits_at_k(scores, best_positive, ks):
    """For each row: is the best positive among the top k?  -> dict k -> bool array."""
    higher = (scores > best_positive[:, None]).sum(axis=1)
    return {k: higher < k for k in ks}


def retrieval_metrics(image_embeds, text_embeds, text_to_image, ks=DEFAULT_RECALL_K):
    """CLIP_benchmark's ``image_retrieval_recall@k`` (text→image) and ``text_retrieval_recall@k`` (image→text).

    ``text_to_image[t]`` is the index of caption t's image. Embeddings are L2-normalised here, as
    CLIP_benchmark does, so unnormalised inputs give the same numbers.
    """
    image_embeds = _normalised(np.asarray(image_embeds, dtype=np.float32))
    text_embeds = _normalised(np.asarray(text_embeds, dtype=np.float32))
    text_to_image = np.asarray(text_to_image)
    scores = text_embeds @ image_embeds.T  # (texts, images)
    num_texts, num_images = scores.shape

    own = scores[np.arange(num_texts), text_to_image]
    image_hits = _hits_at_k(scores, own, ks)

    best_caption_score = np.full(num_images, -np.inf, dtype=scores.dtype)
    np.maximum.at(best_caption_score, text_to_image, own)
    has_caption = np.isin(np.arange(num_images), text_to_image)
    text_hits = _hits_at_k(scores.T, best_caption_score, ks)

    metrics = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = float(image_hits[k].mean())
        # an image without captions has no positive: CLIP_benchmark's recall is 0/0 = nan > 0 -> False
        metrics[f"text_retrieval_recall@{k}"] = float((text_hits[k] & has_caption).mean())
    return metrics


def _normalised(x):
    """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def compare_embeddings(reference, candidate):
    """max abs diff and min / mean cosine between two (N, D) embedding sets (row i against row i)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    cosine = (reference * candidate).sum(-1) / (
        np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1))
    return {"max_abs_diff": float(np.abs(reference - candidate).max()),
            "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}

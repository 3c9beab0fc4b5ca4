"""How close two sets of embeddings are — the figures every parity check and comparison in the kit reads
(export against PyTorch, a backend against PyTorch, an OM against ONNX Runtime). Needs numpy only."""

import math

import numpy as np


def compare_embeddings(reference, candidate):
    """max abs diff and min / mean cosine between two (N, D) embedding sets (row i against row i). A row with
    no direction (all zeros, NaN or Inf) is at cosine -1, the worst there is: a NaN would pass every
    ``cosine < bound`` check and vanish from ``min``."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = (reference * candidate).sum(-1) / (
            np.linalg.norm(reference, axis=-1) * np.linalg.norm(candidate, axis=-1))
    cosine = np.where(np.isfinite(cosine), cosine, -1.0)
    return {"max_abs_diff": float(np.abs(reference - candidate).max()),
            "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def cosine_text(cosine, digits=6):
    """``digits`` decimals, rounded down: 0.9999996 never reads 1.000000, nor 0.98996 0.9900 beside a 0.99 bound
    (the 1e-9 only keeps a binary 0.99 from reading 0.9899)."""
    if not math.isfinite(cosine):
        return str(cosine)
    scale = 10 ** digits
    return f"{math.floor(cosine * scale + 1e-9) / scale:.{digits}f}"

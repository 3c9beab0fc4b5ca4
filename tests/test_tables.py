"""The report's rules for reading tables at a glance: the verdict against PyTorch, identical rows collapsed, ties
said once per metric, and best figures never marked on noisy timings."""

import numpy as np
import pytest

from openclip_ascend.agreement import compare_embeddings, cosine_text
from openclip_ascend.evaluate.verdict import FAIL, PASS, judge
from openclip_ascend.report.tables import collapse_batches, throughput_table, tie_summary, tower_throughput_table


def entry(backend, batch, image, text, cosine=0.9999, check="passed", images=100, captions=500):
    agreement = None if backend == "torch" else {"vision": {"min_cosine": cosine}, "text": {"min_cosine": 0.9999}}
    return {"backend": backend, "batch_size": batch, "check": check, "images": images, "captions": captions,
            "metrics": {"image_retrieval_recall@5": image, "text_retrieval_recall@5": text}, "agreement": agreement}


@pytest.mark.parametrize("image,text,cosine,check,verdict", [
    (0.918, 0.940, 0.9999, "passed", PASS),
    (0.916, 0.940, 0.9999, "passed", PASS),    # 0.002 below: at the bound
    (0.920, 0.940, 0.9999, "passed", PASS),    # 0.002 above
    (0.915, 0.940, 0.9999, "passed", FAIL),    # 0.003 below (500 captions: one query is 0.002)
    (0.921, 0.940, 0.9999, "passed", FAIL),    # better than PyTorch by more than the bound is a difference too
    (0.918, 0.930, 0.9999, "passed", PASS),    # text: one query of 100 images
    (0.918, 0.920, 0.9999, "passed", FAIL),    # two queries
    (0.918, 0.940, 0.9899, "passed", FAIL),    # a vision embedding below cosine 0.99
    (0.918, 0.940, 0.9999, "failed", FAIL),    # degenerate embeddings
])
def test_the_verdict_holds_each_bound_on_each_side(image, text, cosine, check, verdict):
    accuracy = [entry("torch", 4, 0.918, 0.940), entry("ascend", 4, image, text, cosine, check)]
    (ascend,) = [v for v in judge(accuracy) if v["backend"] == "ascend"]
    assert ascend["verdict"] == verdict, ascend["reasons"]


def test_the_verdict_holds_at_every_batch_size_and_says_so_without_a_reference():
    accuracy = [entry("torch", 1, 0.918, 0.94), entry("torch", 8, 0.918, 0.94),
                entry("ascend", 1, 0.918, 0.94), entry("ascend", 8, 0.900, 0.94)]
    (ascend,) = [v for v in judge(accuracy) if v["backend"] == "ascend"]
    assert ascend["verdict"] == FAIL and ascend["reasons"] == ["bs 8: image R@5 -0.0180 against PyTorch"]
    assert ascend["gap"] == pytest.approx(0.018)
    (alone,) = judge([entry("ascend", 4, 0.9, 0.9)])
    assert alone["verdict"] == "not judged" and alone["gap"] is None  # nothing compared: no gap, not a 0


@pytest.mark.parametrize("broken", [0.0, float("nan"), float("inf")])
def test_an_embedding_without_direction_fails_the_verdict(broken):
    """A zero, NaN or Inf row has no cosine to anything: it is the worst (-1), never a NaN that passes every
    bound and drops out of the minimum."""
    reference = np.eye(4, 8)
    candidate = reference.copy()
    candidate[2] = broken
    cosine = compare_embeddings(reference, candidate)["min_cosine"]
    assert cosine == -1.0
    accuracy = [entry("torch", 4, 0.918, 0.940), entry("ascend", 4, 0.918, 0.940, cosine)]
    (ascend,) = [v for v in judge(accuracy) if v["backend"] == "ascend"]
    assert ascend["verdict"] == FAIL and ascend["min_cosine"]["vision"] == -1.0


def test_cosines_are_shown_rounded_down():
    """A cosine never reads better than it is: not 1 when it is not, not at the 0.99 bound when below it."""
    assert cosine_text(0.9999996) == "0.999999" and cosine_text(0.9999996, 5) == "0.99999"
    assert cosine_text(0.99, 4) == "0.9900" and cosine_text(1.0, 5) == "1.00000" and cosine_text(float("nan")) == "nan"
    accuracy = [entry("torch", 4, 0.918, 0.940), entry("ascend", 4, 0.918, 0.940, cosine=0.98996)]
    (ascend,) = [v for v in judge(accuracy) if v["backend"] == "ascend"]
    assert ascend["reasons"] == ["bs 4: a vision embedding at cosine 0.9899"]


def test_identical_rows_are_collapsed_and_different_ones_kept():
    headers, rows = collapse_batches(["backend", "batch size", "R@5"],
                                     [["onnxruntime", 1, "0.9180"], ["onnxruntime", 4, "0.9180"],
                                      ["onnxruntime", 8, "0.9160"], ["torch", 1, "0.9180"]])
    assert rows == [["onnxruntime", "1, 4", "0.9180"], ["onnxruntime", 8, "0.9160"], ["torch", 1, "0.9180"]]


def test_ties_are_said_once_per_metric():
    tie = {"image_retrieval_recall@1": {"queries": 3, "optimistic": 0.47}}
    lines = tie_summary([{"backend": "onnxruntime", "batch_size": b, "ties": tie} for b in (1, 4)]
                        + [{"backend": "torch", "batch_size": 1, "ties": {}}])
    assert lines == ["† image_retrieval_recall@1: exact ties touch up to 3 queries (onnxruntime bs 1, 4), counted "
                     "against the positive; 0.4700 if they went to it.", ""]


def test_a_noisy_figure_is_never_marked_best():
    fps = {1: {"vision": 100.0, "text": 300.0}, 4: {"vision": 200.0, "text": 250.0}}
    headers, rows = throughput_table(fps, noisy={(4, "vision")})
    assert rows == [[1, "100.0", "**300.0**"], [4, "200.0 (noisy)", "250.0"]]
    headers, rows = tower_throughput_table({"ascend": fps, "torch": {1: {"vision": 50.0}}}, "vision",
                                           {"ascend": {(1, "vision")}})
    assert headers == ["BatchSize", "ascend fps", "torch fps"]
    assert rows == [[1, "100.0 (noisy)", "**50.0**"], [4, "**200.0**", ""]]

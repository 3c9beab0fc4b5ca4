"""recall@k must equal CLIP_benchmark's own recall_at_k, computed through its own code."""

import numpy as np
import pytest

from openclip_ascend.evaluate.metrics import evaluate_retrieval, fragile_queries, retrieval_metrics

torch = pytest.importorskip("torch")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")


def clip_benchmark_metrics(image_embeds, text_embeds, text_to_image, ks):
    """CLIP_benchmark's evaluate() after the embedding loop, verbatim in behaviour."""
    images = torch.nn.functional.normalize(torch.from_numpy(image_embeds), dim=-1)
    texts = torch.nn.functional.normalize(torch.from_numpy(text_embeds), dim=-1)
    scores = texts @ images.t()
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), torch.from_numpy(np.asarray(text_to_image))] = True
    batchify, recall_at_k = zeroshot_retrieval.batchify, zeroshot_retrieval.recall_at_k
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (batchify(recall_at_k, scores, positive, 64, "cpu", k=k) > 0).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (batchify(recall_at_k, scores.T, positive.T, 64, "cpu", k=k) > 0).float().mean().item()
    return out


def assert_equals_clip_benchmark(images, texts, text_to_image, ks):
    """Equal hit counts, except for queries a score change of 1e-6 could flip: numpy and torch may
    round a near-tie differently (BLAS kernels differ between CPUs); on random data there are none."""
    result = evaluate_retrieval(images, texts, text_to_image, ks)
    theirs = clip_benchmark_metrics(images, texts, text_to_image, ks)
    fragile = fragile_queries(images, texts, text_to_image, ks, tolerance=1e-6)
    assert result.metrics.keys() == theirs.keys()
    for key, value in theirs.items():
        assert abs(result.hits[key] - round(value * result.queries[key])) <= fragile[key], key
    return result, theirs


@pytest.mark.parametrize("seed,num_images,dim,signal", [(0, 50, 16, 0.0), (1, 200, 32, 1.5), (2, 120, 8, 0.7)])
def test_matches_clip_benchmark_on_random_embeddings(seed, num_images, dim, signal):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, dim)).astype(np.float32)
    captions_per_image = rng.integers(1, 8, size=num_images)  # not always 5
    text_to_image = np.repeat(np.arange(num_images), captions_per_image)
    rng.shuffle(text_to_image)
    texts = (signal * images[text_to_image] + rng.standard_normal((len(text_to_image), dim))).astype(np.float32)
    ks = (1, 5, 10)
    ours = retrieval_metrics(images, texts, text_to_image, ks)
    assert_equals_clip_benchmark(images, texts, text_to_image, ks)
    if signal > 1:
        assert ours["image_retrieval_recall@10"] > ours["image_retrieval_recall@1"]  # not a degenerate case


def test_hand_built_case():
    # 3 images on the axes; captions: t0→img0 exact, t1→img1 but closest to img2, t2→img2 exact,
    # t3→img0 second-closest to img0 (img1 wins).
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [0, 0.2, 1], [0, 0, 1], [0.6, 1, 0]], dtype=np.float32)
    text_to_image = [0, 1, 2, 0]
    metrics = retrieval_metrics(images, texts, text_to_image, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == 0.5  # t0 and t2 rank their image first
    assert metrics["image_retrieval_recall@2"] == 1.0
    # image→text: img0's best caption t0 is top1; img1's only caption t1 is beaten by t3 (1.0) — rank 2;
    # img2: t2 (1.0) ties with nothing above it
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@2"] == 1.0
    assert_equals_clip_benchmark(images, texts, np.array(text_to_image), (1, 2))


def test_image_without_caption_never_counts():
    images = np.eye(3, dtype=np.float32)
    texts = np.eye(3, dtype=np.float32)[:2]
    metrics = retrieval_metrics(images, texts, [0, 1], ks=(2,))
    assert metrics["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert_equals_clip_benchmark(images, texts, np.array([0, 1]), (2,))


def tied_cases():
    """Exact ties as real data and broken models make them: duplicated captions (bit-identical text
    embeddings), duplicated images, and a model whose output collapsed to one constant vector."""
    rng = np.random.default_rng(5)
    images = rng.standard_normal((40, 16)).astype(np.float32)
    text_to_image = np.repeat(np.arange(40), 5)
    texts = (images[text_to_image] + 2.0 * rng.standard_normal((200, 16))).astype(np.float32)
    duplicated_captions = texts.copy()
    for first in range(0, 200, 50):  # four caption texts, each shared by 10 images
        duplicated_captions[first:first + 50:5] = texts[first]
    duplicated_images = images.copy()
    duplicated_images[1::4] = duplicated_images[0::4]  # pairs of identical images
    constant = np.ones((40, 16), dtype=np.float32), np.ones((200, 16), dtype=np.float32)
    return {"duplicated captions": (images, duplicated_captions, text_to_image),
            "duplicated images": (duplicated_images, texts, text_to_image),
            "all constant": (*constant, text_to_image)}


@pytest.mark.parametrize("case", ["duplicated captions", "duplicated images", "all constant"])
def test_ties_never_count_for_the_positive(case):
    images, texts, text_to_image = tied_cases()[case]
    ks = (1, 5, 10)
    result = evaluate_retrieval(images, texts, text_to_image, ks)
    theirs = clip_benchmark_metrics(images, texts, text_to_image, ks)
    assert result.ties, "each case has exact ties that change a figure"
    for key, value in result.metrics.items():
        assert value <= theirs[key] + 1e-7, key  # never above what a topk order gives
        optimistic = result.ties.get(key, {}).get("optimistic", value)
        assert theirs[key] <= optimistic + 1e-7, key  # and topk never beats ties all to the positive
    for key, tie in result.ties.items():
        assert tie["optimistic"] > result.metrics[key] and 0 < tie["queries"] <= result.queries[key]


def test_collapsed_model_scores_zero_and_is_flagged():
    images, texts, text_to_image = tied_cases()["all constant"]
    result = evaluate_retrieval(images, texts, text_to_image)
    assert all(value == 0.0 for value in result.metrics.values())  # was 1.0 when ties went to the positive
    assert result.ties["image_retrieval_recall@5"] == {"queries": 200, "optimistic": 1.0}
    assert result.degenerate and any("identical copies" in p for p in result.problems)
    assert any("scores barely differ" in p for p in result.problems)


def test_nearly_collapsed_model_is_flagged_without_exact_ties():
    rng = np.random.default_rng(11)
    base = rng.standard_normal(32).astype(np.float32)
    images = base + 1e-5 * rng.standard_normal((30, 32)).astype(np.float32)
    texts = base + 1e-5 * rng.standard_normal((90, 32)).astype(np.float32)
    result = evaluate_retrieval(images, texts, np.repeat(np.arange(30), 3))
    assert result.problems == [p for p in result.problems if "scores barely differ" in p] and result.degenerate


def test_healthy_embeddings_with_some_duplicate_captions_pass():
    images, texts, text_to_image = tied_cases()["duplicated captions"]
    assert not evaluate_retrieval(images, texts, text_to_image).degenerate


def test_untied_results_report_no_ties_and_float32_values():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((500, 24)).astype(np.float32)
    text_to_image = np.arange(500)
    texts = (images + 1.1 * rng.standard_normal((500, 24))).astype(np.float32)
    result, theirs = assert_equals_clip_benchmark(images, texts, text_to_image, (5,))
    assert result.ties == {} and not result.degenerate
    key = "image_retrieval_recall@5"
    assert result.metrics[key] == result.hits[key] / 500
    assert result.metrics_float32[key] == float(np.float32(result.hits[key]) / np.float32(500))
    if result.hits[key] == round(theirs[key] * 500):  # the same count prints the same float32 text
        assert result.metrics_float32[key] == theirs[key]


def test_fragile_queries_count_near_ties():
    images = np.eye(3, dtype=np.float32)
    # caption 0's own image scores 0.6, image 1 scores 0.6 + 1e-7: a near-tie at k=1
    texts = np.array([[0.6, 0.6000001, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    fragile = fragile_queries(images, texts, [0, 2], ks=(1,), tolerance=1e-5)
    assert fragile["image_retrieval_recall@1"] == 1
    assert fragile_queries(images, texts, [0, 2], ks=(1,), tolerance=0.0)["image_retrieval_recall@1"] == 0


def test_two_identical_captions_of_one_image_are_both_its_match():
    """Image 0's two captions are the same text (bit-identical embeddings), both its best match: the tie is
    between two positives, so image 0 finds a caption of its own first (text R@1 = 1, as CLIP_benchmark's
    topk gives). Counting the other tied caption against it would give 2/3."""
    images = np.eye(3, dtype=np.float32)
    texts = np.array([[1, 0, 0], [1, 0, 0], [0.2, 1, 0], [0, 0.2, 1]], dtype=np.float32)
    text_to_image = np.array([0, 0, 1, 2])
    result, theirs = assert_equals_clip_benchmark(images, texts, text_to_image, (1,))
    assert result.metrics["text_retrieval_recall@1"] == 1.0 == theirs["text_retrieval_recall@1"]
    assert "text_retrieval_recall@1" not in result.ties  # a tie among positives lowers nothing

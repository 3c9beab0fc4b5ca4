"""recall@k must equal CLIP_benchmark's own recall_at_k, computed through its own code."""

import numpy as np
import pytest

from openclip_ascend.metrics import retrieval_metrics

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
    theirs = clip_benchmark_metrics(images, texts, text_to_image, ks)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-7), key
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
    assert metrics == pytest.approx(clip_benchmark_metrics(images, texts, np.array(text_to_image), (1, 2)), abs=1e-7)


def test_image_without_caption_never_counts():
    images = np.eye(3, dtype=np.float32)
    texts = np.eye(3, dtype=np.float32)[:2]
    metrics = retrieval_metrics(images, texts, [0, 1], ks=(2,))
    assert metrics["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert metrics == pytest.approx(clip_benchmark_metrics(images, texts, np.array([0, 1]), (2,)), abs=1e-7)

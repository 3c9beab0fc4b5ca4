"""Exact text-length trimming: shorter text graphs, the runner's length-sorted batches, length buckets."""

import copy

import numpy as np
import onnx
import pytest

from openclip_ascend.data.dataset import Manifest
from openclip_ascend.data.sample import random_scenes
from openclip_ascend.data.transforms import Tokenizer
from openclip_ascend.evaluate.metrics import evaluate_retrieval
from openclip_ascend.files import KitError
from openclip_ascend.model.export import export_model, export_text_lengths, onnx_path
from openclip_ascend.model.loading import TINY_MODEL, load_model
from openclip_ascend.model.text_lengths import DYNAMIC_LENGTH, length_plan, needed_tokens
from openclip_ascend.run.runner import infer
from openclip_ascend.run.sessions import BucketedSession, OnnxRuntimeSession, open_session


class WidthRecorder:
    """Wraps a session and records the token width of every batch it runs."""

    def __init__(self, inner):
        self.inner, self.widths = inner, []
        for name in ("name", "input_name", "output_name", "input_shape", "input_dtype", "token_widths"):
            if hasattr(inner, name):
                setattr(self, name, getattr(inner, name))

    def run(self, batch):
        self.widths.append(batch.shape[1])
        return self.inner.run(batch)


@pytest.fixture(scope="module")
def lengths_onnx(tiny_model, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("lengths") / "tiny"
    export_model(tiny_model, prefix, towers=("text",))
    report = export_text_lengths(tiny_model, prefix, [DYNAMIC_LENGTH, 16])
    return prefix, report


def demo_and_overlong_captions():
    """The demo set's 500 captions and captions far over 77 tokens (cut by the tokenizer, EOT last)."""
    captions = [caption for scene in random_scenes(100, 1234) for caption in scene.captions()]
    captions += [" ".join(["a red circle beside a small blue square"] * 20), "word " * 200]
    return Tokenizer(TINY_MODEL)(captions)


def run_in_plan(session, tokens, batch):
    """Embeddings of ``tokens`` as the runner batches them for ``session`` (sorted, trimmed)."""
    out = np.zeros((len(tokens), 64), dtype=np.float32)
    for group, width in length_plan([row[None] for row in tokens], batch, session.token_widths):
        out[group] = session.run(np.ascontiguousarray(tokens[group, :width]))
    return out


def test_shorter_graphs_equal_the_full_graph_on_every_demo_caption(lengths_onnx):
    prefix, report = lengths_onnx
    tokens = demo_and_overlong_captions()
    assert needed_tokens(tokens[-1]) == tokens.shape[1] == 77  # the cut caption needs every token
    full = OnnxRuntimeSession(onnx_path(prefix, "text")).run(tokens)
    dynamic = OnnxRuntimeSession(onnx_path(prefix, "text_dynlen"))
    assert dynamic.input_shape == (None, None) and dynamic.token_widths == range(1, 78)
    for batch in (1, 8):
        assert np.abs(run_in_plan(dynamic, tokens, batch) - full).max() <= 1e-5
    bucketed = open_session("auto", f"{onnx_path(prefix, 'text_len16')},{onnx_path(prefix, 'text')}")
    assert isinstance(bucketed, BucketedSession) and bucketed.token_widths == (16, 77)
    assert np.abs(run_in_plan(bucketed, tokens, 1) - full).max() <= 1e-5
    assert set(report) == {"text_dynlen", "text_len16"}
    assert all(case["max_abs_diff"] <= 1e-5 for entry in report.values() for case in entry["parity"].values())


def test_graph_shapes_and_recorded_context(lengths_onnx):
    prefix, _ = lengths_onnx
    for graph, expected in (("text_dynlen", None), ("text_len16", 16)):
        model = onnx.load(str(onnx_path(prefix, graph)))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and (dims[1].dim_value == expected if expected else dims[1].dim_param)
        assert {p.key: p.value for p in model.metadata_props}["context_length"] == "77"


def test_runner_sorts_trims_and_keeps_every_name(lengths_onnx, prep_dir, tiny_onnx, tmp_path, capsys):
    prefix, _ = lengths_onnx
    session = WidthRecorder(OnnxRuntimeSession(onnx_path(prefix, "text_dynlen")))
    summary = infer(session, input=str(prep_dir / "texts"), output=str(tmp_path), output_dirname="trim",
                    outfmt="NPY", batchsize=4)
    infer(OnnxRuntimeSession(onnx_path(tiny_onnx, "text")), input=str(prep_dir / "texts"), output=str(tmp_path),
          output_dirname="full", outfmt="NPY", batchsize=4)
    files = sorted((prep_dir / "texts").glob("*.npy"))
    needed = sorted(needed_tokens(np.load(f)) for f in files)
    timed = session.widths[1:]  # after one warm-up
    assert timed == sorted(timed) and timed == [max(needed[i:i + 4]) for i in range(0, len(needed), 4)]
    assert max(timed) < 77 and summary["tokens_per_sample"] < 30
    assert "text length trimming" in capsys.readouterr().out
    trimmed, full = sorted((tmp_path / "trim").iterdir()), sorted((tmp_path / "full").iterdir())
    assert [p.name for p in trimmed] == [p.name for p in full] and len(trimmed) == len(files)
    assert max(np.abs(np.load(a) - np.load(b)).max() for a, b in zip(trimmed, full)) <= 1e-5
    # filesinfo still maps each file, in the files' order, to its own output
    info = summary["filesinfo"]
    assert list(info) == list(range(len(files)))
    assert all(info[i]["infiles"] == [str(f)] and info[i]["outfiles"][0].endswith(f.stem + "_0.npy")
               for i, f in enumerate(files))


def test_recall_is_identical_with_trimming(lengths_onnx, prep_dir, tiny_onnx):
    prefix, _ = lengths_onnx
    manifest = Manifest.load(prep_dir / "manifest.json")
    vision = OnnxRuntimeSession(onnx_path(tiny_onnx, "vision"))
    images = np.concatenate([vision.run(np.load(prep_dir / "images" / f"{s}.npy")) for s in manifest.image_stems])
    tokens = np.concatenate([np.load(prep_dir / "texts" / f"{c.stem}.npy") for c in manifest.captions])
    owners = [c.image for c in manifest.captions]
    full = evaluate_retrieval(images, OnnxRuntimeSession(onnx_path(prefix, "text")).run(tokens), owners)
    trimmed = evaluate_retrieval(images, run_in_plan(OnnxRuntimeSession(onnx_path(prefix, "text_dynlen")), tokens, 4),
                                 owners)
    assert trimmed.hits == full.hits


def test_pure_inference_runs_the_full_context(lengths_onnx):
    prefix, _ = lengths_onnx
    session = WidthRecorder(OnnxRuntimeSession(onnx_path(prefix, "text_dynlen")))
    summary = infer(session, loop=2, batchsize=2)
    assert session.widths == [77, 77, 77] and summary["tokens_per_sample"] == 77


def test_length_buckets_route_each_batch_and_warm_each_model(lengths_onnx, prep_dir, tmp_path):
    prefix, _ = lengths_onnx
    texts = tmp_path / "texts"
    texts.mkdir()
    for index, source in enumerate(sorted((prep_dir / "texts").glob("*.npy"))[:6]):
        np.save(texts / f"c{index}.npy", np.load(source))
    long_caption = Tokenizer(TINY_MODEL)(["word " * 40])
    np.save(texts / "long.npy", long_caption)  # needs 42 tokens: only the full-length model holds it
    session = WidthRecorder(open_session("auto", f"{onnx_path(prefix, 'text')},{onnx_path(prefix, 'text_len16')}"))
    summary = infer(session, input=str(texts), output=str(tmp_path / "o"), output_dirname="b", outfmt="NPY",
                    batchsize=3)
    # warm-up on each model, then 7 captions in 3 batches: two fit 16 tokens, the one with the long caption 77
    assert session.widths == [16, 77, 16, 16, 77] and summary["tokens_per_sample"] == pytest.approx((6 * 16 + 77) / 7)
    full = OnnxRuntimeSession(onnx_path(prefix, "text"))
    for path in sorted((tmp_path / "o" / "b").iterdir()):
        source = texts / path.name.replace("_0.npy", ".npy")
        assert np.abs(np.load(path) - full.run(np.load(source))).max() <= 1e-5


def test_length_buckets_are_checked(lengths_onnx, tiny_onnx):
    prefix, _ = lengths_onnx
    text, short = onnx_path(prefix, "text"), onnx_path(prefix, "text_len16")
    with pytest.raises(KitError, match="two models take 77 tokens"):
        open_session("auto", f"{text},{text}")
    with pytest.raises(KitError, match=r"tiny_vision\.onnx: length buckets are text models"):
        open_session("auto", f"{short},{onnx_path(tiny_onnx, 'vision')}")
    with pytest.raises(KitError, match="needs 22 tokens, the longest text model takes 16"):
        length_plan([np.array([[49406] + [1] * 20 + [49407]])], 1, (16,))


def test_a_tower_that_reads_every_token_gets_no_shorter_graph(tiny_model, tmp_path):
    model = copy.deepcopy(tiny_model)
    model.text_pool_type = "last"  # SigLIP-style pooling: the last token, which sees every other
    with pytest.raises(KitError, match="attends to or pools every token"):
        export_text_lengths(model, tmp_path / "m", [DYNAMIC_LENGTH])


def test_bucket_lengths_must_be_shorter_than_the_context(lengths_onnx, tiny_model):
    prefix, _ = lengths_onnx
    with pytest.raises(KitError, match="3 to 76 tokens"):
        export_text_lengths(tiny_model, prefix, [77])


def test_vit_b_32_dynamic_text_graph(tmp_path):
    model = load_model("ViT-B-32")  # real architecture, random weights
    export_model(model, tmp_path / "b32", towers=("text",), check=False)
    report = export_text_lengths(model, tmp_path / "b32", [DYNAMIC_LENGTH])
    assert max(case["max_abs_diff"] for case in report["text_dynlen"]["parity"].values()) <= 1e-5

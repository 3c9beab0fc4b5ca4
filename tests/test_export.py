"""ONNX export: the I/O contract and parity with PyTorch, on the real ViT-B-32 architecture."""

import numpy as np
import onnx
import pytest

from openclip_ascend.backends import OnnxRuntimeSession
from openclip_ascend.export import check_parity, export_model, onnx_path, torch_embeddings
from openclip_ascend.towers import example_inputs
from openclip_ascend.files import KitError
from openclip_ascend.models import load_model

CONTRACT = {
    "vision": ("image", onnx.TensorProto.FLOAT, "image_embed"),
    "text": ("text", onnx.TensorProto.INT64, "text_embed"),
}


def assert_contract(prefix, tower, tail_shape, width):
    graph = onnx.load(str(onnx_path(prefix, tower))).graph
    input_name, input_type, output_name = CONTRACT[tower]
    assert [i.name for i in graph.input] == [input_name]
    assert [o.name for o in graph.output] == [output_name]  # exactly one output: no logit_scale
    tensor_type = graph.input[0].type.tensor_type
    assert tensor_type.elem_type == input_type
    dims = tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == list(tail_shape)
    out_dims = graph.output[0].type.tensor_type.shape.dim
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out_dims[0].dim_param and out_dims[1].dim_value == width


@pytest.fixture(scope="module")
def vit_b_32(tmp_path_factory):
    model = load_model("ViT-B-32")  # real architecture, random weights
    prefix = tmp_path_factory.mktemp("vitb32") / "vit_b_32"
    return model, prefix, export_model(model, prefix)


def test_vit_b_32_contract_and_parity(vit_b_32):
    model, prefix, report = vit_b_32
    assert_contract(prefix, "vision", (3, 224, 224), 512)
    assert_contract(prefix, "text", (77,), 512)
    for tower in ("vision", "text"):
        parity = report[tower]["parity"]
        assert set(parity) == {1, 3}
        for stats in parity.values():
            assert stats["max_abs_diff"] <= 1e-4 and stats["min_cosine"] > 0.99999


def test_vit_b_32_dynamic_batch_and_normalised(vit_b_32):
    model, prefix, _ = vit_b_32
    for tower in ("vision", "text"):
        session = OnnxRuntimeSession(onnx_path(prefix, tower))
        for batch in (2, 5):
            inputs = example_inputs(model, tower, batch, seed=10 + batch)
            out = session.run(inputs)
            assert out.shape == (batch, 512)
            assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
            assert np.abs(out - torch_embeddings(model, tower, inputs)).max() <= 1e-4


def test_tiny_model_contract(tiny_onnx):
    assert_contract(tiny_onnx, "vision", (3, 224, 224), 64)
    assert_contract(tiny_onnx, "text", (77,), 64)


def test_parity_failure_is_reported(tiny_model, tiny_onnx, tmp_path):
    # the vision graph of the tiny model compared with a different (random) model must fail
    other = load_model("openclip-ascend-tiny")
    with pytest.raises(KitError, match="differs from PyTorch"):
        check_parity(other, "vision", onnx_path(tiny_onnx, "vision"))


def test_uncached_tag_fails_fast_with_download_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as the client reads the variable, at import
    with pytest.raises(KitError) as error:
        load_model("ViT-B-32", "laion2b_s34b_b79k")
    message = str(error.value)
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" in message and "--pretrained" in message
    assert "HF_HUB_OFFLINE=1 forbids downloading them" in message


def test_unknown_tag_lists_known_ones():
    with pytest.raises(KitError, match="laion2b_s34b_b79k"):
        load_model("ViT-B-32", "no_such_tag")


def test_checkpoint_of_another_model_is_readable_error(tmp_path):
    from openclip_ascend.models import TINY_WEIGHTS

    with pytest.raises(KitError, match="do not fit --model-name ViT-B-32"):
        load_model("ViT-B-32", str(TINY_WEIGHTS))


def test_torch2onnx_cli_takes_the_references_flags(tmp_path, sample_dir):
    import json
    import subprocess
    import sys

    from openclip_ascend.models import TINY_MODEL, TINY_WEIGHTS

    image = sorted(sample_dir.glob("*.jpg"))[0]
    result = subprocess.run([sys.executable, "openclip_torch2onnx.py", "--model-name", TINY_MODEL,
                             "--pretrained", str(TINY_WEIGHTS), "--onnx-prefix", str(tmp_path / "m"),
                             "--opset-version", "14", "--image", str(image), "--text", "a dog"],
                            capture_output=True, text=True, check=True)
    assert "vision batch 3: max abs diff" in result.stdout and "text batch 1: max abs diff" in result.stdout
    assert "vision --image: max abs diff" in result.stdout and "text --text: max abs diff" in result.stdout
    assert result.stderr == ""  # trained weights: no warning
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["random_weights"] is False and report["towers"]["text"]["parity"]["given"]["max_abs_diff"] <= 1e-4
    assert (tmp_path / "m_vision.onnx").is_file() and (tmp_path / "m_text.onnx").is_file()
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_torch2onnx_defaults_are_the_references(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    empty_cache = {"HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(root / "openclip_torch2onnx.py")], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, **empty_cache})
    # the reference's laion2b_s34b_b79k: never random weights by omission, and never a download
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --pretrained laion2b_s34b_b79k: the weights of "
                                    "ViT-B-32/laion2b_s34b_b79k are not on this machine")
    assert not (tmp_path / "models").exists()


def test_random_weights_only_when_asked_and_never_silently(tmp_path):
    import json
    import subprocess
    import sys

    from openclip_ascend.models import TINY_MODEL

    result = subprocess.run([sys.executable, "openclip_torch2onnx.py", "--model-name", TINY_MODEL,
                             "--pretrained", "none", "--onnx-prefix", str(tmp_path / "r"), "--towers", "text"],
                            capture_output=True, text=True, check=True)
    assert "warning: --pretrained none: openclip-ascend-tiny gets random weights" in result.stderr
    assert json.loads(result.stdout[result.stdout.index("{"):])["random_weights"] is True


def _flops(module, inputs):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        module(torch.from_numpy(inputs))
    return counter.get_total_flops()


def test_last_block_runs_for_the_pooled_token_only(vit_b_32):
    import torch

    from openclip_ascend.export import plain_attention
    from openclip_ascend.towers import tower_module

    model = vit_b_32[0]
    if not hasattr(model.visual, "_embeds"):
        pytest.skip("this open_clip has no _embeds/_pool hooks (2.24 lacks them): the export keeps its own forward there")
    for tower in ("vision", "text"):
        stock, pooled = tower_module(model, tower), tower_module(model, tower, pooled_last_block=True)
        assert pooled.pooled and not stock.pooled
        inputs = example_inputs(model, tower, 4, seed=21)  # text rows end at different EOT positions
        with torch.inference_mode(), plain_attention(model):
            expected = stock(torch.from_numpy(inputs)).numpy()
            assert np.abs(pooled(torch.from_numpy(inputs)).numpy() - expected).max() <= 1e-5
            # ViT-B-32: the last of 12 blocks for 1 of 50 (77) tokens saves 5 % (6.7 %) of the FLOP
            assert _flops(pooled, inputs) < 0.96 * _flops(stock, inputs)


def test_pooling_that_reads_every_token_keeps_the_whole_last_block(tmp_path):
    import open_clip

    from openclip_ascend.towers import tower_module
    from openclip_ascend.models import TINY_MODEL

    cfg = open_clip.get_model_config(TINY_MODEL)
    model = load_model(TINY_MODEL, vision_cfg={**cfg["vision_cfg"], "pool_type": "avg"},
                       text_cfg={**cfg["text_cfg"], "pool_type": "last"})
    assert not tower_module(model, "vision", pooled_last_block=True).pooled
    assert not tower_module(model, "text", pooled_last_block=True).pooled
    report = export_model(model, tmp_path / "avg")
    for tower in ("vision", "text"):
        assert max(stats["max_abs_diff"] for stats in report[tower]["parity"].values()) <= 1e-4


def test_graphs_over_the_protobuf_limit_keep_their_weights_beside_them(tiny_model, tmp_path, monkeypatch):
    """ViT-H-14's vision tower and ViT-bigG exceed protobuf's 2 GB: shown here with the limit lowered."""
    import openclip_ascend.export as export

    prefix = tmp_path / "big"
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    report = export_model(tiny_model, prefix)
    for tower in ("vision", "text"):
        graph, data = onnx_path(prefix, tower), export.external_data_path(onnx_path(prefix, tower))
        assert data.stat().st_size > 10 * graph.stat().st_size  # the weights live in the .data file
        assert max(stats["max_abs_diff"] for stats in report[tower]["parity"].values()) <= 1e-4
        for derived in (export.quantize_int8(prefix, tower), export.simulate_fp16(prefix, tower)):
            assert export.external_data_path(derived).is_file()
            assert OnnxRuntimeSession(derived).run(example_inputs(tiny_model, tower, 2)).shape == (2, 64)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 1_900_000_000)
    export.export_tower(tiny_model, "text", onnx_path(prefix, "text"))
    assert not export.external_data_path(onnx_path(prefix, "text")).exists()  # stale weights removed
    assert OnnxRuntimeSession(onnx_path(prefix, "text")).run(example_inputs(tiny_model, "text", 1)).shape == (1, 64)


def _npu_graph_checks(model, prefix, padded):
    """The NPU-shaped graphs equal the standard ones (ONNX Runtime, batch 1 and 3) and carry the padded
    token axis and 2-D products."""
    from openclip_ascend.export import export_npu_graphs

    report = export_npu_graphs(model, prefix)
    assert set(report) == {"vision_npu", "text_npu"}
    for tower in ("vision", "text"):
        standard, npu = OnnxRuntimeSession(onnx_path(prefix, tower)), OnnxRuntimeSession(onnx_path(prefix, f"{tower}_npu"))
        for batch in (1, 3):
            inputs = example_inputs(model, tower, batch, seed=20 + batch)
            assert np.abs(standard.run(inputs) - npu.run(inputs)).max() <= 1e-5
        graph = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path(prefix, f"{tower}_npu")))).graph
        dims = {d.dim_value for v in graph.value_info for d in v.type.tensor_type.shape.dim}
        assert padded[tower] in dims, (tower, sorted(dims))
        gemm_inputs = [v for v in graph.value_info if any(v.name in node.input[:1] for node in graph.node
                                                          if node.op_type == "Gemm")]
        assert gemm_inputs and all(len(v.type.tensor_type.shape.dim) == 2 for v in gemm_inputs)  # 2-D products


def test_npu_graph_pads_tokens_to_16_and_keeps_the_embeddings(vit_b_32, tiny_model, tmp_path):
    model, prefix, _ = vit_b_32
    _npu_graph_checks(model, prefix, {"vision": 64, "text": 80})  # ViT-B-32: 50 → 64 tokens, text 77 → 80
    export_model(tiny_model, tmp_path / "tiny")
    _npu_graph_checks(tiny_model, tmp_path / "tiny", {"vision": 64, "text": 80})

"""Beyond ViT-B-32: other open_clip architectures through export and ONNX Runtime, shapes from the model."""

import numpy as np
import onnx
import pytest

from openclip_ascend.ascend.atc import graph_input, input_shape_arg
from openclip_ascend.data.transforms import Tokenizer, preprocess_config
from openclip_ascend.files import KitError
from openclip_ascend.model.export import export_model, onnx_path, torch_embeddings
from openclip_ascend.model.loading import load_model
from openclip_ascend.model.towers import example_inputs
from openclip_ascend.run.sessions import OnnxRuntimeSession


def shallow(model_name, layers=2):
    """The real model's I/O contract (image size, patch, widths, context, embedding) with few layers."""
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    vision = {**cfg["vision_cfg"], "layers": layers}
    text = {**cfg["text_cfg"], "layers": layers}
    return load_model(model_name, vision_cfg=vision, text_cfg=text)


@pytest.mark.parametrize("model_name,image_size,width", [("ViT-L-14-336", 336, 768), ("ViT-B-16", 224, 512),
                                                         ("ViT-B-32-quickgelu", 224, 512)])
def test_other_architectures_export_with_their_own_shapes(model_name, image_size, width, tmp_path):
    model = shallow(model_name)
    report = export_model(model, tmp_path / "m")
    for tower in ("vision", "text"):
        assert max(stats["max_abs_diff"] for stats in report[tower]["parity"].values()) <= 1e-4
        session = OnnxRuntimeSession(onnx_path(tmp_path / "m", tower))
        inputs = example_inputs(model, tower, 2, seed=5)
        assert session.run(inputs).shape == (2, width)
        assert np.abs(session.run(inputs) - torch_embeddings(model, tower, inputs)).max() <= 1e-4
    name, dims = graph_input(onnx_path(tmp_path / "m", "vision"))
    assert input_shape_arg(name, dims, 8) == f"image:8,3,{image_size},{image_size}"
    out = onnx.load(str(onnx_path(tmp_path / "m", "text"))).graph.output[0].type.tensor_type.shape.dim
    assert out[1].dim_value == width
    assert preprocess_config(model).size == (image_size, image_size)


@pytest.mark.parametrize("model_name", ["ViT-B-32", "ViT-L-14-336", "convnext_base_w"])
def test_preprocessing_reads_its_config_without_building_weights(model_name):
    from openclip_ascend.model.loading import model_skeleton

    skeleton = model_skeleton(model_name)
    assert all(parameter.is_meta for parameter in skeleton.parameters())  # no weight memory at all
    expected = preprocess_config(shallow(model_name, layers=1) if model_name.startswith("ViT") else load_model(model_name))
    assert preprocess_config(skeleton) == expected


def test_hugging_face_tokenizer_models_fail_early():
    with pytest.raises(KitError, match="Hugging Face tokenizer 'timm/ViT-B-16-SigLIP'"):
        Tokenizer("ViT-B-16-SigLIP")


def test_quickgelu_config_is_honoured():
    model = shallow("ViT-B-32-quickgelu", layers=1)
    from open_clip.transformer import QuickGELU

    assert any(isinstance(module, QuickGELU) for module in model.modules())


# --- GPU fallback selection ------------------------------------------------------------------------

def test_execution_provider_selection():
    from openclip_ascend.run.sessions import execution_providers

    assert execution_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert execution_providers("cuda", everything) == everything
    assert execution_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(KitError, match="pip install onnxruntime-gpu"):
        execution_providers("cuda", ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(KitError, match="choose cpu or cuda"):
        execution_providers("rocm", ["CPUExecutionProvider"])


def test_cpu_sessions_flush_denormals(tiny_onnx):
    # the causal-mask softmax of the text tower is ~5x slower on x86 with denormals
    options = OnnxRuntimeSession(onnx_path(tiny_onnx, "text")).session.get_session_options()
    assert options.get_session_config_entry("session.set_denormal_as_zero") == "1"


def test_cuda_without_onnxruntime_gpu_is_a_clear_error(tiny_onnx):
    with pytest.raises(KitError, match="no CUDA provider.*onnxruntime-gpu"):
        OnnxRuntimeSession(onnx_path(tiny_onnx, "text"), device="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_silent_cpu_fallback_is_caught(tiny_onnx, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(KitError, match="fell back to the CPU"):
        OnnxRuntimeSession(onnx_path(tiny_onnx, "text"), device="cuda")


def test_gpu_backend_joins_the_pipeline_backends(monkeypatch, tmp_path):
    from openclip_ascend.pipeline import RunConfig, backends_of

    monkeypatch.setenv("PATH", str(tmp_path))
    assert backends_of(RunConfig(tmp_path, gpu=True, int8=True)) == [
        "onnxruntime", "onnxruntime-int8", "onnxruntime-cuda", "torch"]


def test_npu_graph_pads_vit_b_16_tokens_197_to_208(tmp_path):
    """ViT-B-16's 197 tokens: padded to 208 and masked (pad16, the recommended set), or padded to 208 for the
    products and attended at 197 with q, k, v from one product (padrows,qkv); both equal the standard graph."""
    from openclip_ascend.model.export import export_npu_graphs

    model = shallow("ViT-B-16", layers=2)
    export_model(model, tmp_path / "m", towers=("vision",), check=False)
    standard = OnnxRuntimeSession(onnx_path(tmp_path / "m", "vision"))
    for options, graph, keys in ((None, "vision_npu", 208), (frozenset({"padrows", "qkv"}), "vision_npu_padrows_qkv", 197)):
        report = export_npu_graphs(model, tmp_path / "m", towers=("vision",), options=options, check=False)
        npu = OnnxRuntimeSession(report[graph]["path"])
        for batch in (1, 3):
            inputs = example_inputs(model, "vision", batch, seed=30 + batch)
            assert np.abs(standard.run(inputs) - npu.run(inputs)).max() <= 1e-5
        inferred = onnx.shape_inference.infer_shapes(onnx.load(report[graph]["path"])).graph
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.value_info}
        assert [0, 208, 768] in shapes.values()  # the residual stream, padded
        assert {shapes[node.input[0]][-1] for node in inferred.node if node.op_type == "Softmax"} == {keys}
        assert ("Split" in {node.op_type for node in inferred.node}) == (options is not None)

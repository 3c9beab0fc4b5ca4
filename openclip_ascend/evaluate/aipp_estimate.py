"""AIPP's accuracy cost, before any NPU: the vision graph on step 1's float pixels against the same graph on
the uint8 images normalised as AIPP computes it on the chip (emulated, each step in fp16)."""

from ..ascend.aipp import aipp_config, block_for_input, emulate, parse_aipp_config, to_uint8


def estimate(onnx_prefix, prep, batch_size=16):
    """AIPP's accuracy cost on the CPU: the fp32 vision graph on step 1's pixels and on AIPP's fp16
    normalisation of the same uint8 images (text fp32 for both). Returns {"float": recall, "aipp": recall,
    "vision_agreement": cosine and max abs diff, "images"}."""
    from ..agreement import compare_embeddings
    from ..data.dataset import load_prepared
    from ..model.export import onnx_path
    from ..run.runner import embed_all
    from ..run.sessions import OnnxRuntimeSession
    from .metrics import evaluate_retrieval

    manifest, arrays, owners = load_prepared(prep)
    pre, pixels, tokens = manifest.preprocess, arrays["vision"], arrays["text"]
    # the values as the config atc reads prints them (min_chn to 6 decimals, var_reci_chn to 10)
    config = block_for_input(parse_aipp_config(aipp_config(pre["mean"], pre["std"], *pre["size"]), "the kit's AIPP config"))
    vision = OnnxRuntimeSession(onnx_path(onnx_prefix, "vision"))
    text = embed_all(OnnxRuntimeSession(onnx_path(onnx_prefix, "text")).run, tokens, batch_size)
    reference = embed_all(vision.run, pixels, batch_size)
    aipp = embed_all(vision.run, emulate(to_uint8(pixels, pre["mean"], pre["std"]), config), batch_size)
    return {"float": evaluate_retrieval(reference, text, owners).metrics,
            "aipp": evaluate_retrieval(aipp, text, owners).metrics,
            "vision_agreement": compare_embeddings(reference, aipp), "images": len(pixels)}

"""AIPP: feed the vision OM the resized, cropped uint8 image and let the chip normalise it.

atc's ``--insert_op_conf`` takes a static AIPP config; with ``input_format : RGB888_U8`` the OM's input
becomes uint8 [B, H, W, 3] (4× fewer bytes per ``.npy`` than float32 [B, 3, H, W]) and each channel is
computed as ``(x − mean_chn_i − min_chn_i) × var_reci_chn_i`` in fp16. With ``mean_chn_i = 0``,
``min_chn_i = 255·mean_i`` and ``var_reci_chn_i = 1 / (255·std_i)`` that is open_clip's
``(x / 255 − mean) / std``, up to rounding — which ``emulate`` reproduces on the CPU, so the cost of
AIPP is measured (recall and cosine against the float path) before anyone reaches an NPU.

uint8 arrays need no second pass over the images: step 1's float pixels come from a 256-entry table per
channel, so ``to_uint8`` inverts them exactly.
"""

from pathlib import Path

import numpy as np

from .files import KitError, write_text


def aipp_config(mean, std, height, width):
    """The static AIPP config (atc ``--insert_op_conf``) that normalises RGB uint8 with ``mean``/``std``."""
    lines = ["aipp_op {", "    aipp_mode : static", "    input_format : RGB888_U8",
             f"    src_image_size_w : {width}", f"    src_image_size_h : {height}",
             "    csc_switch : false", "    rbuv_swap_switch : false"]
    lines += [f"    mean_chn_{c} : 0" for c in range(3)]
    lines += [f"    min_chn_{c} : {255.0 * float(m):.6f}" for c, m in enumerate(mean)]
    lines += [f"    var_reci_chn_{c} : {1.0 / (255.0 * float(s)):.10f}" for c, s in enumerate(std)]
    return "\n".join(lines + ["}"]) + "\n"


def write_aipp_config(path, mean, std, height, width):
    write_text(path, aipp_config(mean, std, height, width))
    return Path(path)


def parse_aipp_config(text):
    """{key: value} of an AIPP config's ``aipp_op`` block (numbers as floats)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            value = value.strip()
            try:
                values[key.strip()] = float(value)
            except ValueError:
                values[key.strip()] = value
    return values


def emulate(images_u8, config):
    """AIPP's normalisation of uint8 [B, H, W, 3] as the chip computes it (each step stored in fp16)
    → float32 [B, 3, H, W]."""
    pixels = np.asarray(images_u8).astype(np.float16).transpose(0, 3, 1, 2)
    out = np.empty(pixels.shape, dtype=np.float16)
    for c in range(3):
        shifted = (pixels[:, c] - np.float16(config.get(f"mean_chn_{c}", 0))).astype(np.float16)
        shifted = (shifted - np.float16(config.get(f"min_chn_{c}", 0))).astype(np.float16)
        out[:, c] = (shifted * np.float16(config.get(f"var_reci_chn_{c}", 1))).astype(np.float16)
    return out.astype(np.float32)


def to_uint8(pixels, mean, std):
    """Step 1's float32 [B, 3, H, W] back to the uint8 [B, H, W, 3] it was made from (exact: each channel's
    256 values are distinct); a value no uint8 maps to is a one-line error."""
    scaled = np.arange(256, dtype=np.float32) / np.float32(255)
    out = np.empty((pixels.shape[0],) + pixels.shape[2:] + (3,), dtype=np.uint8)
    for c, (m, s) in enumerate(zip(mean, std)):
        table = (scaled - np.float32(m)) / np.float32(s)
        order = np.argsort(table)
        index = np.clip(np.searchsorted(table[order], pixels[:, c]), 0, 255)
        candidates = order[index]
        if not np.array_equal(table[candidates], pixels[:, c]):
            raise KitError("these arrays were not made by step 1 with this model's mean/std; re-run openclip_preprocess.py")
        out[..., c] = candidates
    return out


def prepare_uint8(prep):
    """For an AIPP OM: ``prep/images_u8/{stem}.npy`` (uint8 [1, H, W, 3]) beside each step-1 array, and
    ``prep/aipp.cfg`` with the manifest's mean, std and size; returns the config's path."""
    from tqdm import tqdm

    from .dataset import Manifest
    from .files import save_npy

    prep = Path(prep)
    manifest_path = prep / "manifest.json"
    if not manifest_path.is_file():
        raise KitError(f"{manifest_path}: not found; run step 1 (openclip_preprocess.py) first")
    config = Manifest.load(manifest_path).preprocess
    mean, std, (height, width) = config["mean"], config["std"], config["size"]
    for path in tqdm(sorted((prep / "images").glob("*.npy")), desc="uint8 images", unit="img"):
        target = prep / "images_u8" / path.name
        if not target.is_file():
            save_npy(target, to_uint8(np.load(path), mean, std))
    return write_aipp_config(prep / "aipp.cfg", mean, std, height, width)


def estimate(onnx_prefix, prep, batch_size=16):
    """AIPP's accuracy cost on the CPU: the fp32 vision graph on step 1's pixels and on AIPP's fp16
    normalisation of the same uint8 images (text fp32 for both). Returns {"float": recall, "aipp": recall,
    "vision_agreement": cosine and max abs diff, "images"}."""
    from .backends import OnnxRuntimeSession
    from .dataset import load_prepared
    from .export import onnx_path
    from .metrics import compare_embeddings, evaluate_retrieval
    from .precision import embed_all

    manifest, arrays, owners = load_prepared(prep)
    pre, pixels, tokens = manifest.preprocess, arrays["vision"], arrays["text"]
    # the values as the config atc reads prints them (min_chn to 6 decimals, var_reci_chn to 10)
    config = parse_aipp_config(aipp_config(pre["mean"], pre["std"], *pre["size"]))
    vision = OnnxRuntimeSession(onnx_path(onnx_prefix, "vision"))
    text = embed_all(OnnxRuntimeSession(onnx_path(onnx_prefix, "text")).run, tokens, batch_size)
    reference = embed_all(vision.run, pixels, batch_size)
    aipp = embed_all(vision.run, emulate(to_uint8(pixels, pre["mean"], pre["std"]), config), batch_size)
    return {"float": evaluate_retrieval(reference, text, owners).metrics,
            "aipp": evaluate_retrieval(aipp, text, owners).metrics,
            "vision_agreement": compare_embeddings(reference, aipp), "images": len(pixels)}

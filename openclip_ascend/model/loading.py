"""Loading open_clip models: the bundled tiny model, local checkpoints, pretrained tags.

A tag resolves as the reference scripts resolve it, through open_clip and huggingface_hub: from the
local cache, else downloaded (with huggingface_hub's progress bar) from the hub or the mirror
``HF_ENDPOINT`` names, into the cache ``HF_HOME`` / ``HF_HUB_CACHE`` name. Offline (``HF_HUB_OFFLINE=1``)
or unreachable, the error is one line with the file's URL and how to pass it instead.
"""

import contextlib
import logging
import os
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path

from ..files import KitError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TINY_MODEL = "openclip-ascend-tiny"
TINY_CONFIG = ASSETS / f"{TINY_MODEL}.json"
TINY_WEIGHTS = ASSETS / f"{TINY_MODEL}.safetensors"

_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"  # the reference scripts' default tag
RANDOM_WEIGHTS = "none"  # --pretrained none: random weights, only when asked for, always with a warning


def onnx_prefix(out_dir, model_name):
    """``OUT/models/vit_b_32``: where a run folder keeps a model's graphs (``{prefix}_{graph}.onnx``)."""
    return Path(out_dir) / "models" / model_name.lower().replace("-", "_").replace("/", "_")


def is_random_weights(pretrained):
    return isinstance(pretrained, str) and pretrained.strip().lower() == RANDOM_WEIGHTS


def default_pretrained(model_name, pretrained):
    """What a user-facing command loads when ``--pretrained`` is not given: the bundled weights for the
    tiny model, the reference's tag otherwise — never silently random weights."""
    if pretrained:
        return pretrained
    return str(TINY_WEIGHTS) if model_name == TINY_MODEL else DEFAULT_PRETRAINED




def open_clip_module():
    """Import open_clip with the kit's own model configs registered; an older release than the kit
    supports stops with one line instead of an AttributeError deep inside a step."""
    import warnings

    with warnings.catch_warnings():  # open_clip 2.24 imports timm.models.layers, which newer timm deprecates
        warnings.simplefilter("ignore", FutureWarning)
        import open_clip

    if not hasattr(open_clip, "get_model_preprocess_cfg"):
        from ..stack import FLOORS

        raise KitError(f"this open_clip has no get_model_preprocess_cfg (added in 2.24); pip install "
                       f"'open_clip_torch>={FLOORS['open_clip_torch']}'")

    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG)
    return open_clip


@contextlib.contextmanager
def quiet_root_logger():
    """Hide root-logger warnings that say nothing to a user of the kit (open_clip's "no pretrained
    weights loaded" when the kit loads them itself, the quantizer's pre-processing hint)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def check_model_name(model_name):
    open_clip = open_clip_module()
    if model_name not in open_clip.list_models():
        raise KitError(f"--model-name {model_name!r} is not an open_clip model config; "
                       f"known names include ViT-B-32, ViT-B-16, ViT-L-14 and {TINY_MODEL} "
                       "(open_clip.list_models() lists them all)")
    return open_clip


def _hf_location(tag_cfg):
    """(repo id, weight file names in the order open_clip tries them) of a tag on the Hugging Face hub."""
    repo_id, file_name = posixpath.split(tag_cfg["hf_hub"])
    return repo_id, ([file_name] if file_name else list(_WEIGHT_FILES))


@dataclass
class Weights:
    """Where ``--pretrained`` points: ``file`` (a local checkpoint), ``cache`` (a tag already downloaded),
    ``download`` (a tag to fetch from ``url``) or ``random`` (``none``)."""

    source: str
    path: Path = None
    url: str = ""
    tag_cfg: dict = None


def locate_weights(model_name, pretrained):
    """Where the weights ``pretrained`` names are, without downloading anything."""
    if not pretrained or is_random_weights(pretrained):
        return Weights("random")
    if Path(pretrained).is_file():
        return Weights("file", Path(pretrained))
    open_clip = check_model_name(model_name)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        hint = " (a file path? it does not exist)" if any(sep in pretrained for sep in "/\\.") else ""
        raise KitError(f"--pretrained {pretrained!r}: no such file{hint}, and not a pretrained tag of {model_name} "
                       f"(its tags: {tags}); pass a local checkpoint file")
    if tag_cfg.get("hf_hub") and (_hub_first(open_clip) or not tag_cfg.get("url")):
        from huggingface_hub import hf_hub_url, try_to_load_from_cache

        repo_id, names = _hf_location(tag_cfg)
        for name in names:
            cached = try_to_load_from_cache(repo_id, name)
            if isinstance(cached, str) and Path(cached).is_file():
                return Weights("cache", Path(cached), tag_cfg=tag_cfg)
        return Weights("download", url=hf_hub_url(repo_id, names[-1]), tag_cfg=tag_cfg)
    url = tag_cfg.get("url", "")
    cached = Path(os.path.expanduser("~/.cache/clip")) / posixpath.basename(url)  # open_clip's cache for URLs
    if url and cached.is_file():
        return Weights("cache", cached, tag_cfg=tag_cfg)
    return Weights("download", url=url or "the URL open_clip.get_pretrained_cfg lists", tag_cfg=tag_cfg)


def _hub_first(open_clip):
    """Whether this open_clip downloads a tag that has both a hub repo and a URL from the hub (3.x:
    ``prefer_hf_hub``) or from the URL (2.x, unless forced)."""
    import inspect

    return "prefer_hf_hub" in inspect.signature(open_clip.pretrained.download_pretrained).parameters


def hub_offline():
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_checkpoint(model_name, pretrained):
    """Path of the weights to load, or None for random weights (``pretrained`` empty or ``none``); a tag
    not yet cached is downloaded here, as open_clip downloads it for the reference scripts."""
    weights = locate_weights(model_name, pretrained)
    if weights.source == "random":
        return None
    if weights.source != "download":
        return weights.path
    fetch = f"fetch {weights.url} and pass --pretrained /path/to/that/file"
    if hub_offline():
        raise KitError(f"--pretrained {pretrained}: the weights of {model_name}/{pretrained} are not on this machine "
                       f"and HF_HUB_OFFLINE=1 forbids downloading them; {fetch}, or unset HF_HUB_OFFLINE")
    from open_clip.pretrained import download_pretrained

    print(f"downloading {model_name}/{pretrained} from {weights.url}", file=sys.stderr)
    try:
        path = download_pretrained(weights.tag_cfg)
    except Exception as exc:  # open_clip wraps every hub or network error in its own types
        cause = " ".join(str(exc).split())[:300]
        raise KitError(f"--pretrained {pretrained}: downloading {weights.url} failed ({cause}); check the network or "
                       "point HF_ENDPOINT at a Hugging Face mirror (e.g. HF_ENDPOINT=https://hf-mirror.com), or "
                       f"{fetch}") from exc
    if not path or not Path(path).is_file():
        raise KitError(f"--pretrained {pretrained}: open_clip returned no file for {weights.url}; {fetch}")
    return Path(path)


def _load_checkpoint(open_clip, model, checkpoint):
    """open_clip's loader; for ``.safetensors`` files on open_clip releases that read only torch files
    (2.24 among them: ``invalid load key``), the state dict is read with safetensors itself."""
    import pickle

    try:
        open_clip.load_checkpoint(model, str(checkpoint))
    except pickle.UnpicklingError:
        if checkpoint.suffix != ".safetensors":
            raise
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(checkpoint)), strict=True)


def load_model(model_name, pretrained=None, **overrides):
    """Build ``model_name`` in eval mode with the weights ``pretrained`` names (a file, or a tag: cached or downloaded).

    ``overrides`` replace top-level config entries (e.g. a ``vision_cfg`` with fewer layers), as
    open_clip's ``create_model(**model_kwargs)`` does. ``pretrained`` None builds random weights for
    tests and benchmarks; the user-facing ``none`` does too, with a warning on stderr.
    """
    open_clip = check_model_name(model_name)
    checkpoint = resolve_checkpoint(model_name, pretrained)
    if is_random_weights(pretrained):
        print(f"warning: --pretrained none: {model_name} gets random weights; no accuracy figure from it says "
              "anything about a trained model", file=sys.stderr)
    with quiet_root_logger():
        model = open_clip.create_model(model_name, pretrained=None, **overrides)
    if checkpoint is not None:
        try:
            _load_checkpoint(open_clip, model, checkpoint)
        except Exception as exc:  # torch, safetensors and open_clip each raise their own types here
            detail = "; ".join(line.strip() for line in str(exc).strip().splitlines()[:3])[:400]
            raise KitError(f"{checkpoint}: these weights do not fit --model-name {model_name} ({detail}); pass "
                           "an open_clip checkpoint of that model, or the model name it was trained as") from exc
    return model.eval()


def model_skeleton(model_name):
    """``model_name``'s modules without weights, built on torch's meta device: its configuration
    (preprocessing, geometry) in well under a second and no memory, where building ViT-H-14 on the
    CPU takes 10 s and 4 GB. torch < 2.0 has no meta-device context and builds on the CPU."""
    import torch

    open_clip = check_model_name(model_name)
    meta = torch.device("meta")
    on_meta = hasattr(meta, "__enter__")
    with quiet_root_logger(), (meta if on_meta else contextlib.nullcontext()):
        return open_clip.create_model(model_name, pretrained=None, device="meta" if on_meta else "cpu")

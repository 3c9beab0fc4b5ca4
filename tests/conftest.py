"""Shared fixtures: the bundled tiny model, a small generated sample set, its arrays and ONNX files."""

import copy
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openclip_ascend.export import export_model
from openclip_ascend.models import TINY_MODEL, TINY_WEIGHTS, load_model
from openclip_ascend.preprocess import preprocess_dataset
from openclip_ascend.sample import write_sample_dir


ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"


@pytest.fixture(scope="session")
def stand_in_env(tmp_path_factory):
    """``stand_in_env(table="910B4.txt", **extra)``: os.environ with the Ascend stand-ins (tests/fakes) on PATH
    and PYTHONPATH, npu-smi printing the recorded ``table``, and CANN's set_env.sh variables pointing at a
    toolkit folder that records its version (7.0.RC1) as an install does."""
    toolkit = tmp_path_factory.mktemp("Ascend") / "ascend-toolkit" / "latest"
    (toolkit / "compiler").mkdir(parents=True)
    (toolkit / "compiler" / "version.info").write_text("Version=7.0.RC1\nversion_dir=7.0.RC1\n")

    def env(table="910B4.txt", **extra):
        return {**os.environ,
                "PATH": f"{FAKES / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}",
                "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests" / "data" / "npu_smi" / table),
                "ASCEND_TOOLKIT_HOME": str(toolkit), "ASCEND_HOME_PATH": str(toolkit),
                "LD_LIBRARY_PATH": f"{toolkit / 'lib64'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}", **extra}

    return env


@pytest.fixture(scope="session")
def tiny_model():
    return load_model(TINY_MODEL, str(TINY_WEIGHTS))


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    return write_sample_dir(tmp_path_factory.mktemp("sample"), count=10, seed=7)


@pytest.fixture(scope="session")
def prep_dir(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    preprocess_dataset(sample_dir, out, TINY_MODEL, workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model, tmp_path_factory):
    """Prefix of the exported tiny model: PREFIX_vision.onnx and PREFIX_text.onnx."""
    prefix = tmp_path_factory.mktemp("models") / "tiny"
    export_model(tiny_model, prefix)
    return prefix


def _recall_gap_explained(run_a, run_b, manifest):
    """Whether two runs' recall differs only where float rounding can decide: per metric, the hits may
    differ by at most the number of queries whose hit flips when every score moves by the largest score
    difference between the two runs (near-ties; another CPU or runtime rounds them the other way)."""
    from openclip_ascend.dataset import Manifest
    from openclip_ascend.metrics import _scores, evaluate_retrieval, fragile_queries
    from openclip_ascend.postprocess import read_embedding_dir

    m = Manifest.load(manifest)
    runs = []
    for run in (run_a, run_b):
        images, texts = read_embedding_dir(run / "vision"), read_embedding_dir(run / "text")
        runs.append((np.stack([images[s] for s in m.image_stems]), np.stack([texts[c.stem] for c in m.captions])))
    owners = [c.image for c in m.captions]
    tolerance = float(np.abs(_scores(*runs[0]) - _scores(*runs[1])).max()) * 2 + 1e-7
    fragile = fragile_queries(*runs[0], owners, tolerance=tolerance)
    a, b = (evaluate_retrieval(*run, owners) for run in runs)
    return all(abs(a.hits[key] - b.hits[key]) <= fragile[key] for key in a.hits), fragile


@pytest.fixture(scope="session")
def recall_gap_explained():
    return _recall_gap_explained


@pytest.fixture(scope="session")
def planted_weights(tiny_model, tmp_path_factory):
    """The tiny model with vision block 0's ln_2 output scaled by 1e5 and its MLP's first product by
    1e-5: the same function in fp32, but ln_2's output overflows fp16 (max 65504)."""
    model = copy.deepcopy(tiny_model)
    block = model.visual.transformer.resblocks[0]
    with torch.no_grad():
        block.ln_2.weight.mul_(1e5)
        block.ln_2.bias.mul_(1e5)
        block.mlp.c_fc.weight.mul_(1e-5)
    path = tmp_path_factory.mktemp("planted") / "planted.pt"
    torch.save(model.state_dict(), path)
    return path

"""Shared fixtures: the bundled tiny model, a small generated sample set, its arrays and ONNX files."""

import copy
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from openclip_ascend.data.preprocess import preprocess_dataset
from openclip_ascend.data.sample import write_sample_dir
from openclip_ascend.model.export import export_model
from openclip_ascend.model.loading import TINY_MODEL, TINY_WEIGHTS, load_model

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


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """A folder for the files one test module shares, removed when the module is done: full-size exports
    are hundreds of MB each, and a folder kept to the end of the run adds to every later module's disk. Kept
    when a test failed meanwhile, as pytest keeps a failing test's own folder."""
    failed_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


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


# What two runs of the same graph may differ by, for the precision the candidate computes at — fixed bounds,
# never widened by the difference measured. fp32: two runtimes' float rounding. fp16 (an OM compiled for
# force_fp16 or mixed precision): every op's result stored in fp16 (2^-11 relative) over the tiny model's depth;
# measured on the stand-in OMs: max abs diff 1.7e-3, min cosine 0.99998.
PRECISION_BOUNDS = {"fp32": {"min_cosine": 0.99999, "max_abs_diff": 1e-4, "score_tolerance": 1e-5},
                    "fp16": {"min_cosine": 0.999, "max_abs_diff": 1e-2, "score_tolerance": 1e-2}}


def _same_embeddings(run, reference, manifest, precision):
    """``run``'s embeddings are ``reference``'s for the same inputs, up to ``precision``'s bounds: per output file
    (matched by name: rows in the wrong order or under another file's name fail) the cosine and max abs diff, and
    recall@k equal up to the queries whose hit a score change within the precision's fixed tolerance can flip.
    Raises AssertionError naming what differs; returns the worst cosine and max abs diff per tower."""
    from openclip_ascend.agreement import compare_embeddings
    from openclip_ascend.data.dataset import Manifest
    from openclip_ascend.evaluate.metrics import evaluate_retrieval, fragile_queries
    from openclip_ascend.evaluate.postprocess import read_embedding_dir

    bounds, m = PRECISION_BOUNDS[precision], Manifest.load(manifest)
    stems = {"vision": m.image_stems, "text": [c.stem for c in m.captions]}
    stacked, worst = {}, {}
    for tower, names in stems.items():
        ours, theirs = read_embedding_dir(Path(run) / tower), read_embedding_dir(Path(reference) / tower)
        missing = sorted(set(names) - set(ours))
        assert not missing, f"{tower}: {len(missing)} outputs missing (first {missing[0]})"
        a, b = np.stack([ours[n] for n in names]), np.stack([theirs[n] for n in names])
        per_file = [compare_embeddings(x[None], y[None]) for x, y in zip(a, b)]
        worst[tower] = {"min_cosine": min(p["min_cosine"] for p in per_file),
                        "max_abs_diff": max(p["max_abs_diff"] for p in per_file)}
        for name, entry in zip(names, per_file):
            assert entry["min_cosine"] >= bounds["min_cosine"] and entry["max_abs_diff"] <= bounds["max_abs_diff"], \
                f"{tower} {name}: cosine {entry['min_cosine']:.6f}, max abs diff {entry['max_abs_diff']:.2e} " \
                f"outside the {precision} bounds {bounds}"
        stacked[tower] = (a, b)
    owners = [c.image for c in m.captions]
    ours = evaluate_retrieval(stacked["vision"][0], stacked["text"][0], owners)
    theirs = evaluate_retrieval(stacked["vision"][1], stacked["text"][1], owners)
    fragile = fragile_queries(stacked["vision"][1], stacked["text"][1], owners, tolerance=bounds["score_tolerance"])
    for key in theirs.hits:
        assert abs(ours.hits[key] - theirs.hits[key]) <= fragile[key], \
            f"{key}: {ours.hits[key]} hits against {theirs.hits[key]} (near-ties within {precision}: {fragile[key]})"
    return worst


@pytest.fixture(scope="session")
def same_embeddings():
    return _same_embeddings


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

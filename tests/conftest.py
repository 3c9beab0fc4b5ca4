"""Shared fixtures: the bundled tiny model, a small generated sample set, its arrays and ONNX files."""

import pytest

from openclip_ascend.export import export_model
from openclip_ascend.models import TINY_MODEL, TINY_WEIGHTS, load_model
from openclip_ascend.preprocess import preprocess_dataset
from openclip_ascend.sample import write_sample_dir


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

"""Weights that download like the reference: a pretrained tag resolves through open_clip and huggingface_hub's own
client — here against a hub the test serves on 127.0.0.1 (HEAD with the hub's headers, then GET), reached
through HF_ENDPOINT as Ascend hosts reach a mirror."""

import copy
import hashlib
import http.server
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REPO = "openclip-ascend-test/tiny-hub"
TAG = "hubtest"
ABSENT, ABSENT_REPO = "absent", "openclip-ascend-test/absent"
# the tag, registered as open_clip registers its own (a hub repo with open_clip's default file names), then the
# kit's script runs as a user runs it
LAUNCHER = f"""
import os, runpy, sys
import open_clip.pretrained as pretrained
tags = pretrained._PRETRAINED.setdefault("openclip-ascend-tiny", {{}})
tags["{TAG}"] = {{"url": "", "hf_hub": "{REPO}/"}}
tags["{ABSENT}"] = {{"url": "", "hf_hub": "{ABSENT_REPO}/"}}  # a repo the hub (a mirror) does not have
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))  # as Python does for a script it runs
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class Hub(http.server.ThreadingHTTPServer):
    """The two requests huggingface_hub's download makes: HEAD /{repo}/resolve/{revision}/{file} (the commit,
    ETag and size in headers) and GET of the same; a file the repo lacks is the hub's 404 EntryNotFound."""

    commit = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.files, self.requests = {}, []

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        """quiet"""

    def _answer(self, with_body):
        self.server.requests.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        body = None
        if len(parts) >= 5 and parts[2] == "resolve":
            body = self.server.files.get(("/".join(parts[:2]), "/".join(parts[4:])))
        if body is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.server.commit)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802 - http.server's name
        self._answer(False)

    def do_GET(self):  # noqa: N802
        self._answer(True)


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory):
    """The hub on 127.0.0.1 serving a checkpoint that differs from the bundled weights (so a test can tell
    which weights a graph was exported from), as ``open_clip_pytorch_model.bin``."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    hub = Hub()
    hub.files[(REPO, "open_clip_pytorch_model.bin")] = buffer.getvalue()
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    local = tmp_path_factory.mktemp("served") / "served.bin"
    local.write_bytes(buffer.getvalue())
    yield hub, local
    hub.shutdown()


def run_kit(script, args, tmp_path, **env):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HF_")}
    environment.update(HF_HOME=str(tmp_path / "hf"), **env)
    return subprocess.run([sys.executable, str(launcher), str(ROOT / script), *args], capture_output=True, text=True,
                          cwd=ROOT, env=environment)


def test_a_tag_downloads_through_hf_endpoint_and_the_graph_holds_the_served_weights(served, tmp_path, tiny_model):
    import onnxruntime as ort

    from openclip_ascend.model.loading import TINY_MODEL, load_model
    from openclip_ascend.model.towers import example_inputs, tower_module

    hub, local = served
    hub.requests.clear()
    prefix = tmp_path / "m"
    result = run_kit("openclip_torch2onnx.py", ["--model-name", TINY_MODEL, "--pretrained", TAG, "--onnx-prefix",
                                                str(prefix), "--towers", "vision"], tmp_path, HF_ENDPOINT=hub.endpoint)
    assert result.returncode == 0, result.stderr[-2000:]
    file_url = f"{hub.endpoint}/{REPO}/resolve/main/open_clip_pytorch_model.bin"
    assert f"downloading {TINY_MODEL}/{TAG} from {file_url}" in result.stderr
    assert ("HEAD", f"/{REPO}/resolve/main/open_clip_pytorch_model.bin") in hub.requests
    assert ("GET", f"/{REPO}/resolve/main/open_clip_pytorch_model.bin") in hub.requests
    cached = list((tmp_path / "hf" / "hub").rglob("open_clip_pytorch_model.bin"))
    assert len(cached) == 1 and cached[0].read_bytes() == local.read_bytes()  # in HF_HOME's cache, whole
    pixels = example_inputs(tiny_model, "vision", 2, seed=3)
    graph = ort.InferenceSession(str(prefix) + "_vision.onnx", providers=["CPUExecutionProvider"])
    exported = graph.run(None, {graph.get_inputs()[0].name: pixels})[0]
    with torch.no_grad():
        served_model = tower_module(load_model(TINY_MODEL, str(local)), "vision")
        bundled = tower_module(tiny_model, "vision")
        assert np.abs(exported - served_model(torch.from_numpy(pixels)).numpy()).max() <= 1e-4
        assert np.abs(exported - bundled(torch.from_numpy(pixels)).numpy()).max() > 1e-2  # not the bundled weights
    hub.requests.clear()  # a second run uses the cache: no GET
    again = run_kit("openclip_torch2onnx.py", ["--model-name", TINY_MODEL, "--pretrained", TAG, "--onnx-prefix",
                                               str(tmp_path / "again"), "--towers", "vision"], tmp_path,
                    HF_ENDPOINT=hub.endpoint)
    assert again.returncode == 0 and not [r for r in hub.requests if r[0] == "GET"] and "downloading" not in again.stderr


@pytest.fixture()
def registered(monkeypatch):
    """The test tags in this process's open_clip registry, and no network: HF_HUB_OFFLINE as the client reads it."""
    import huggingface_hub.constants as constants
    import open_clip.pretrained as pretrained

    from openclip_ascend.model.loading import TINY_MODEL

    monkeypatch.setitem(pretrained._PRETRAINED, TINY_MODEL, {TAG: {"url": "", "hf_hub": f"{REPO}/"}})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return f"{constants.ENDPOINT}/{REPO}/resolve/main/open_clip_pytorch_model.bin"


def test_offline_is_one_line_with_the_url_and_stops_the_pipeline_before_step_one(registered, tmp_path):
    """An uncached tag used to be found in step 2, after step 1 had preprocessed everything."""
    from openclip_ascend.commands.export import main as export
    from openclip_ascend.commands.pipeline import main as pipeline
    from openclip_ascend.doctor import weights_check
    from openclip_ascend.files import KitError
    from openclip_ascend.model.loading import TINY_MODEL

    message = (f"--pretrained {TAG}: the weights of {TINY_MODEL}/{TAG} are not on this machine and HF_HUB_OFFLINE=1 "
               f"forbids downloading them; fetch {registered} and pass --pretrained /path/to/that/file")
    with pytest.raises(KitError) as error:
        export(["--model-name", TINY_MODEL, "--pretrained", TAG, "--onnx-prefix", str(tmp_path / "m")])
    assert str(error.value).startswith(message)
    out = tmp_path / "run"
    with pytest.raises(KitError) as error:
        pipeline(["--output-dir", str(out), "--pretrained", TAG])
    assert str(error.value).startswith(message) and not out.exists()
    check = weights_check(TINY_MODEL, TAG, explicit=True)
    assert check.status == "fail" and "HF_HUB_OFFLINE=1 forbids the download" in check.found


def test_a_repo_missing_on_the_mirror_is_one_line_and_doctor_tells_before(served, tmp_path):
    """Through HF_ENDPOINT: doctor's HEAD request finds the tag downloadable and the absent repo not; the download
    of the absent one is one line naming its URL."""
    from openclip_ascend.model.loading import TINY_MODEL

    hub, _ = served
    code = (LAUNCHER.split("sys.argv")[0] + "from openclip_ascend.doctor import weights_check\n"
            f"for tag in ('{TAG}', '{ABSENT}'):\n    print(weights_check('{TINY_MODEL}', tag, True))\n")
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HF_")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**environment, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")})
    found, absent = result.stdout.splitlines()
    assert "status='ok'" in found and f"downloadable from {hub.endpoint}/{REPO}" in found, result.stderr
    assert "status='fail'" in absent and f"{hub.endpoint}/{ABSENT_REPO}/resolve/main/" in absent
    download = run_kit("openclip_torch2onnx.py", ["--model-name", TINY_MODEL, "--pretrained", ABSENT, "--onnx-prefix",
                                                  str(tmp_path / "m")], tmp_path, HF_ENDPOINT=hub.endpoint)
    last = download.stderr.splitlines()[-1]
    assert download.returncode == 2 and "Traceback" not in download.stderr
    assert last.startswith(f"error: --pretrained {ABSENT}: downloading {hub.endpoint}/{ABSENT_REPO}/resolve/main/"
                           "open_clip_pytorch_model.bin failed (") and "HF_ENDPOINT" in last
    assert not (tmp_path / "m_vision.onnx").exists()

"""Stand-in for aclruntime, the C++ back end (a pybind11 module) under ais_bench's Python front end, over a fake
OM: the JSON file the atc stand-in writes, naming the ONNX graph it was compiled from.

The real front end imports it at the top of ``ais_bench/infer/interface.py``, so a Python without it cannot
import InferSession. What is modelled, as ``../shared/reference/ascend-tools.md`` documents the real one:

- ``InferenceSession(model_path, device_id, options)``: loads the OM (an unreadable file fails here); inputs and
  outputs described with aclruntime's ``dtype`` enum (printed ``dtype.float32``); a dynamic-batch OM reports -1
  as its batch and the largest gear's size; ``set_dynamic_batchsize`` rescales ``realsize`` and answers a value
  that is not a gear with ACL's bare ``[-1][ACL: general failure]``, as it answers a run without a gear;
  ``set_staticbatch`` drops the gear; a static run takes only feeds of exactly ``realsize`` bytes.
- The OM computes at the precision atc compiled it for (om.py): fp16 by default, fp32 where told, kept nodes in
  fp32; a static AIPP OM (RGB888_U8) takes uint8 NHWC at the config's source size and normalises in fp16.
- ``sumary().exec_time_list``: each execute's time in ms — a float per run from the 2023 back end
  (Ascend/tools), a ``(start, end)`` pair from the newer one (ait/msit), chosen with
  ``$FAKE_AIS_BENCH_GENERATION`` (``tools-2023``, the default, or ``ait``), as the front end is.
- ``options.acl_json_path`` whose ``dump`` section names the model: every execution dumps its ops (dump.py).
- ``$FAKE_OM_MS`` (JSON ``{variant tag: ms per sample}``, ``base`` for an untagged OM, ``*`` for the rest;
  ``vision:TAG`` / ``text:TAG`` for one tower's OM) replaces the measured execute time, so a sweep's choice can
  be checked.
"""

import json
import os
import re
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from record import record  # noqa: E402

ACL_FAILURE = "[-1][ACL: general failure]"
GENERATIONS = ("tools-2023", "ait")
_NUMPY = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
          "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def generation():
    chosen = os.environ.get("FAKE_AIS_BENCH_GENERATION") or GENERATIONS[0]
    if chosen not in GENERATIONS:
        raise RuntimeError(f"FAKE_AIS_BENCH_GENERATION={chosen}: choose {', '.join(GENERATIONS)}")
    return chosen


class dtype:  # the back end's own (lower-case) name
    """aclruntime's dtype enum member: printed as ``dtype.float32``."""

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return f"dtype.{self.name}"

    def __repr__(self):
        return f"<dtype.{self.name}>"


def session_options():
    return SimpleNamespace(acl_json_path=None, log_level=2, loop=1)


class BaseTensor:
    """Host memory the front end hands the back end: an address and a byte count (the array stays alive in the
    front end while the run lasts)."""

    def __init__(self, address, nbytes):
        import ctypes

        self.bytes = bytes((ctypes.c_char * nbytes).from_address(address)) if nbytes else b""


class Tensor:
    """An output: ``to_host()`` copies it back, ``numpy.array(tensor)`` reads it."""

    def __init__(self, array):
        self.array = array

    def to_host(self):
        """Outputs are already in host memory here."""

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)


def _fixed_ms(model_path):
    table = json.loads(os.environ.get("FAKE_OM_MS") or "null")
    if not table:
        return None
    found = re.search(r"_(vision|text)(?:_\w+?)?_(?:bs\d+|dynbs)(?:_(.+))?$", os.path.basename(model_path).split(".om")[0])
    tower, tag = (found.group(1), found.group(2) or "base") if found else (None, "base")
    return table.get(f"{tower}:{tag}", table.get(tag, table.get("*")))


def _aipp(images, config):
    """Static AIPP on uint8 NHWC: per channel (x − mean_chn − min_chn) × var_reci_chn, each step in fp16 as the
    AIPP unit computes, out as NCHW for the graph."""
    planes = []
    for c in range(3):
        x = images[..., c].astype(np.float16)
        x = (x - np.float16(float(config.get(f"mean_chn_{c}", 0)))).astype(np.float16)
        x = (x - np.float16(float(config.get(f"min_chn_{c}", 0)))).astype(np.float16)
        planes.append((x * np.float16(float(config.get(f"var_reci_chn_{c}", 1)))).astype(np.float16))
    return np.stack(planes, axis=1).astype(np.float32)


class InferenceSession:
    def __init__(self, model_path, device_id, options):
        from .om import CompiledModel

        with open(model_path, encoding="utf-8") as handle:
            self.om = json.load(handle)  # a real OM is binary; an unreadable one fails here too
        record("InferSession", device_id=device_id, model_path=str(model_path))
        self.dumper = self._dumper(options.acl_json_path, model_path, device_id)
        self.model = CompiledModel(self.om, expose_all=self.dumper is not None)
        graph_input = self.model.session.get_inputs()[0]
        self.input_name, self.np_dtype = self.om["input_name"], _NUMPY[graph_input.type]
        self.gears = self.om["dynamic_batch_size"]
        self.dims = list(self.om["input_dims"])  # -1 first for a dynamic-batch OM
        self.aipp = self.om.get("aipp")
        if self.aipp:  # RGB888_U8: the OM takes uint8 NHWC at the AIPP source size
            self.np_dtype = np.uint8
            self.dims = [self.dims[0], int(self.aipp["src_image_size_h"]), int(self.aipp["src_image_size_w"]), 3]
        self.per_sample = int(np.prod(self.dims[1:])) * np.dtype(self.np_dtype).itemsize
        self.batch = max(self.gears) if self.gears else self.dims[0]
        self.gear_set = False
        self.exec_time_list = []
        self.fixed_ms = _fixed_ms(model_path)
        self.pairs = generation() == "ait"

    def _dumper(self, acl_json_path, model_path, device_id):
        if not acl_json_path:
            return None
        from .dump import Dumper

        with open(acl_json_path, encoding="utf-8") as handle:
            dump = json.load(handle).get("dump")
        model_name = os.path.basename(model_path).split(".")[0]
        if dump and any(entry.get("model_name") == model_name for entry in dump.get("dump_list", [])):
            return Dumper(self.om, dump["dump_path"], device_id, model_name)
        return None

    def get_inputs(self):
        size = self.per_sample * (max(self.gears) if self.gears else self.dims[0])
        return [SimpleNamespace(name=self.input_name, datatype=dtype(np.dtype(self.np_dtype).name),
                                shape=list(self.dims), size=size, realsize=self.per_sample * self.batch,
                                format=self.om["input_format"])]

    def get_outputs(self):
        out = self.model.session.get_outputs()[0]
        shape = [-1 if self.gears else self.dims[0]] + list(out.shape[1:])
        return [SimpleNamespace(name=out.name, datatype=dtype("float32"), shape=shape, size=0, realsize=0,
                                format="ND")]

    def set_dynamic_batchsize(self, batch):
        if not self.gears or int(batch) not in self.gears:
            raise RuntimeError(ACL_FAILURE)
        self.batch, self.gear_set = int(batch), True

    def set_staticbatch(self):
        """The newer front end calls it before every static-mode run: a gear set earlier no longer holds."""
        self.gear_set = False

    def run(self, output_names, inputs):
        if self.gears and not self.gear_set:
            raise RuntimeError(ACL_FAILURE)  # a dynamic-batch OM run without a gear
        if len(inputs) != 1 or len(inputs[0].bytes) != self.batch * self.per_sample:
            raise RuntimeError(ACL_FAILURE)  # static: exactly realsize bytes
        array = np.frombuffer(inputs[0].bytes, dtype=self.np_dtype).reshape([self.batch] + self.dims[1:])
        if self.aipp:
            array = _aipp(array, self.aipp)
        graph_feed = {self.model.session.get_inputs()[0].name: array}
        start = time.perf_counter()
        values = self.model.values(graph_feed)
        outputs = [values[name] for name in self.model.output_names]
        end = time.perf_counter()
        elapsed = (end - start) * 1000.0 if self.fixed_ms is None else self.fixed_ms * self.batch
        self.exec_time_list.append((start * 1000.0, start * 1000.0 + elapsed) if self.pairs else elapsed)
        if self.dumper:
            self.dumper.dump(graph_feed, values, self.model.stored)
        return [Tensor(output) for output in outputs]

    def sumary(self):  # sic: the back end's name
        return SimpleNamespace(exec_time_list=list(self.exec_time_list))

    def reset_sumaryinfo(self):
        self.exec_time_list = []

    def free_resource(self):
        """Nothing held beyond the Python objects."""

    @staticmethod
    def finalize():
        record("finalize")

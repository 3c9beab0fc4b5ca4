"""Stand-in for ais_bench.infer.interface.InferSession (aclruntime's back end) over a fake OM: a JSON
file naming an ONNX graph, written by the atc stand-in. It behaves as the reference file documents the
real one: a dynamic-batch OM reports -1 as its batch and the largest gear's size, set_dynamic_batchsize
rescales realsize and fails with ACL's generic error for a value that is not a gear, static mode takes
only a feed of exactly realsize bytes, datatypes are aclruntime's enum names. With an acl.json whose
"dump" section names the model, every execution dumps each graph op's inputs and outputs as CANN does
(see dump.py)."""

import json
import os
import re
import sys
import time
from types import SimpleNamespace

import aclruntime  # the real front end imports its back end first: without it, no InferSession
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from record import record  # noqa: E402

_DTYPES = {"tensor(float)": ("float32", np.float32), "tensor(int64)": ("int64", np.int64),
           "tensor(int32)": ("int32", np.int32), "tensor(float16)": ("float16", np.float16)}
ACL_FAILURE = "[-1][ACL: general failure]"


def _fixed_ms(model_path):
    """$FAKE_OM_MS: a JSON table {variant tag: ms per sample} ("base" for an OM without a tag, "*" for any
    other) that replaces the measured execute time, so a sweep's choice can be checked."""
    table = json.loads(os.environ.get("FAKE_OM_MS") or "null")
    if not table:
        return None
    found = re.search(r"_(?:bs\d+|dynbs)(?:_(.+))?$", os.path.basename(model_path).split(".om")[0])
    tag = (found.group(1) if found else None) or "base"
    return table.get(tag, table.get("*"))


def _aipp(images, config):
    """Static AIPP on uint8 NHWC: per channel (x − mean_chn − min_chn) × var_reci_chn, each step in fp16 as the
    AIPP unit computes, out as float32 NCHW for the graph."""
    planes = []
    for c in range(3):
        x = images[..., c].astype(np.float16)
        x = (x - np.float16(float(config.get(f"mean_chn_{c}", 0)))).astype(np.float16)
        x = (x - np.float16(float(config.get(f"min_chn_{c}", 0)))).astype(np.float16)
        planes.append((x * np.float16(float(config.get(f"var_reci_chn_{c}", 1)))).astype(np.float16))
    return np.stack(planes, axis=1).astype(np.float32)


class InferSession:
    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        import onnxruntime as ort

        with open(model_path, encoding="utf-8") as handle:
            self.om = json.load(handle)  # a real OM is binary; an unreadable one fails here too
        record("InferSession", device_id=device_id, model_path=str(model_path))
        self.device_id = device_id
        self.ort = ort.InferenceSession(self.om["onnx"], providers=["CPUExecutionProvider"])
        dtype_name, self.np_dtype = _DTYPES[self.ort.get_inputs()[0].type]
        self.gears = self.om["dynamic_batch_size"]
        self.dims = list(self.om["input_dims"])  # -1 first for a dynamic-batch OM
        self.aipp = self.om.get("aipp")
        if self.aipp:  # RGB888_U8: the OM takes uint8 NHWC at the AIPP source size
            dtype_name, self.np_dtype = "uint8", np.uint8
            self.dims = [self.dims[0], int(self.aipp["src_image_size_h"]), int(self.aipp["src_image_size_w"]), 3]
        self.datatype = aclruntime.dtype(dtype_name)
        self.per_sample = int(np.prod(self.dims[1:])) * np.dtype(self.np_dtype).itemsize
        self.batch = max(self.gears) if self.gears else self.dims[0]
        self.gear_set = False
        self.exec_time_list = []
        self.dumper = None
        self.fixed_ms = _fixed_ms(model_path)
        if acl_json_path:
            from .dump import Dumper

            with open(acl_json_path, encoding="utf-8") as handle:
                dump = json.load(handle).get("dump")
            model_name = os.path.basename(model_path).split(".")[0]
            if dump and any(entry.get("model_name") == model_name for entry in dump.get("dump_list", [])):
                self.dumper = Dumper(self.om, dump["dump_path"], device_id, model_name)

    def get_inputs(self):
        size = self.per_sample * (max(self.gears) if self.gears else self.dims[0])
        return [SimpleNamespace(name=self.om["input_name"], datatype=self.datatype, shape=list(self.dims),
                                size=size, realsize=self.per_sample * self.batch, format=self.om["input_format"])]

    def get_outputs(self):
        out = self.ort.get_outputs()[0]
        shape = [-1 if self.gears else self.dims[0]] + [d for d in out.shape[1:]]
        return [SimpleNamespace(name=out.name, datatype=aclruntime.dtype("float32"), shape=shape, size=0, realsize=0,
                                format="ND")]

    def set_dynamic_batchsize(self, batch):
        if not self.gears or int(batch) not in self.gears:
            raise RuntimeError(ACL_FAILURE)
        self.batch, self.gear_set = int(batch), True

    def infer(self, feeds, mode="static", custom_sizes=100000):
        if mode != "static":
            raise RuntimeError(f"mode {mode} not supported by this stand-in")
        if self.gears and not self.gear_set:
            raise RuntimeError(ACL_FAILURE)  # a dynamic-batch OM run without a gear
        feed = feeds[0]
        expected = self.batch * self.per_sample
        if feed.nbytes != expected:
            raise RuntimeError(ACL_FAILURE)
        array = np.frombuffer(np.ascontiguousarray(feed).tobytes(), dtype=self.np_dtype)
        array = array.reshape([self.batch] + self.dims[1:])
        if self.aipp:
            array = _aipp(array, self.aipp)
        start = time.perf_counter()
        output = self.ort.run(None, {self.ort.get_inputs()[0].name: array})[0]
        elapsed = (time.perf_counter() - start) * 1000.0
        self.exec_time_list.append(elapsed if self.fixed_ms is None else self.fixed_ms * self.batch)
        if self.dumper:
            self.dumper.dump({self.ort.get_inputs()[0].name: array})
        return [output]

    def sumary(self):
        return SimpleNamespace(exec_time_list=list(self.exec_time_list))

    def reset_sumaryinfo(self):
        self.exec_time_list = []

    def free_resource(self):
        pass

    def finalize(self):
        record("finalize", model_path=self.om["onnx"])

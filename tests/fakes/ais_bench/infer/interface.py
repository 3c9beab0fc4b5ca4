"""Stand-in for ais_bench.infer.interface.InferSession over a fake OM (JSON naming an ONNX file)."""

import json
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from record import record  # noqa: E402

_DTYPES = {"tensor(float)": ("dtype.float32", np.float32), "tensor(int64)": ("dtype.int64", np.int64)}


class InferSession:
    def __init__(self, device_id, model_path, acl_json_path=None, debug=False, loop=1):
        import onnxruntime as ort

        with open(model_path, encoding="utf-8") as handle:
            self.om = json.load(handle)  # a real OM is binary; an unreadable one fails here too
        record("InferSession", device_id=device_id, model_path=str(model_path))
        self.device_id = device_id
        self.ort = ort.InferenceSession(self.om["onnx"], providers=["CPUExecutionProvider"])
        ort_input = self.ort.get_inputs()[0]
        self.datatype, self.np_dtype = _DTYPES[ort_input.type]
        dims = list(self.om["input_dims"])
        self.gears = self.om["dynamic_batch_size"]
        if self.gears:
            dims[0] = max(self.gears)  # a dynamic-batch OM reports its largest gear
        self.dims = dims
        self.batch = None if self.gears else dims[0]
        self.per_sample = int(np.prod(dims[1:])) * np.dtype(self.np_dtype).itemsize
        self.exec_time_list = []

    def get_inputs(self):
        size = self.per_sample * self.dims[0]
        return [SimpleNamespace(name=self.om["input_name"], datatype=self.datatype, shape=list(self.dims),
                                size=size, realsize=size, format=self.om["input_format"])]

    def get_outputs(self):
        out = self.ort.get_outputs()[0]
        return [SimpleNamespace(name=out.name, datatype="dtype.float32", shape=list(out.shape), size=0, realsize=0)]

    def set_dynamic_batchsize(self, batch):
        if not self.gears or int(batch) not in self.gears:
            raise RuntimeError(f"set_dynamic_batchsize({batch}): not a gear of this model {self.gears}")
        self.batch = int(batch)

    def infer(self, feeds, mode="static", custom_sizes=100000):
        if mode != "static":
            raise RuntimeError(f"mode {mode} not supported by this stand-in")
        if self.batch is None:
            raise RuntimeError("dynamic batch model: call set_dynamic_batchsize first")
        feed = feeds[0]
        expected = self.batch * self.per_sample
        if feed.nbytes != expected:
            raise RuntimeError(f"input size {feed.nbytes} does not match the model input size {expected}")
        array = np.frombuffer(np.ascontiguousarray(feed).tobytes(), dtype=self.np_dtype)
        array = array.reshape([self.batch] + self.dims[1:])
        start = time.perf_counter()
        output = self.ort.run(None, {self.ort.get_inputs()[0].name: array})[0]
        self.exec_time_list.append((time.perf_counter() - start) * 1000.0)
        return [output]

    def sumary(self):
        return SimpleNamespace(exec_time_list=list(self.exec_time_list))

    def free_resource(self):
        pass

    def finalize(self):
        pass

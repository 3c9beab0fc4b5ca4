"""The stand-in's operator dump, in the layout CANN writes (the kit's reader, openclip_ascend/npu_dump.py,
names its sources): ``{dump_path}/{YYYYMMDDhhmmss}/{device}/{model_name}/{model_id}/0/`` then one file per
op execution, ``{op_type}.{op name, '/' and '.' as '_'}.{task_id}.{stream_id}.{timestamp}``, holding a
little-endian uint64 header length, a ``toolkit.dumpdata.DumpData`` protobuf (encoded here by hand, data
fields left empty) and the raw input data, then the output data.

One op per ONNX node (no fusion). Float tensors are stored as the OM computes them: fp16 unless atc was
told to keep fp32 (``--precision_mode=force_fp32`` / ``must_keep_origin_dtype``, or the node listed in
``--keep_dtype``), so an fp16 overflow shows as inf; the values themselves come from ONNX Runtime in
fp32, rounded — a stand-in, not an fp16 kernel."""

import os
import struct
import time

import numpy as np

DT = {np.dtype(np.float32): 1, np.dtype(np.float16): 2, np.dtype(np.int8): 3, np.dtype(np.uint8): 4,
      np.dtype(np.int32): 7, np.dtype(np.int64): 8, np.dtype(np.bool_): 11, np.dtype(np.float64): 12}
FORMAT_ND = 2


def _varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, value):
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _shape(dims):
    packed = b"".join(_varint(int(d)) for d in dims)
    return _field(1, packed) if dims else b""


def _tensor(array, is_output, original=None):
    """OpOutput / OpInput without its data (the data follows the header)."""
    fields = _field(1, DT[array.dtype]) + _field(2, FORMAT_ND) + _field(3, _shape(array.shape))
    if is_output:
        if original:
            fields += _field(4, _field(1, original[0].encode()) + _field(2, original[1]))
        return fields + _field(6, array.nbytes) + _field(7, _shape(array.shape))
    return fields + _field(5, array.nbytes) + _field(6, _shape(array.shape))


class Dumper:
    def __init__(self, om, dump_path, device_id, model_name):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper

        model = onnx.load(om["onnx"])
        keep_file = next((flag.split("=", 1)[1] for flag in om["flags"] if flag.startswith("--keep_dtype=")), None)
        self.kept = set()
        if keep_file:
            with open(keep_file, encoding="utf-8") as handle:
                self.kept = {line.strip() for line in handle if line.strip()}
        self.all_fp32 = any(flag in ("--precision_mode=force_fp32", "--precision_mode=must_keep_origin_dtype")
                            for flag in om["flags"])
        self.nodes = [node for node in model.graph.node if node.op_type not in ("Constant",) and node.output]
        produced = {name for node in self.nodes for name in node.output if name}
        present = {output.name for output in model.graph.output}
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(model.graph.output)}
        model.graph.output.extend(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None)
                                  for name in sorted(produced - present))
        self.session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]
        self.initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
        self.folder = os.path.join(dump_path, time.strftime("%Y%m%d%H%M%S"), str(device_id), model_name, "1", "0")
        self.task = 0

    def _stored(self, array, node):
        array = np.asarray(array)
        if array.dtype == np.float32 and not self.all_fp32 and node.name not in self.kept:
            with np.errstate(over="ignore"):
                return array.astype(np.float16)
        return array

    def dump(self, feed):
        values = dict(zip(self.names, self.session.run(None, feed)))
        values.update(feed)
        values.update(self.initializers)
        os.makedirs(self.folder, exist_ok=True)
        for node in self.nodes:
            inputs = [self._stored(values[name], node) for name in node.input if name in values]
            outputs = [self._stored(values[name], node) for name in node.output if name in values]
            inputs = [a for a in inputs if a.dtype in DT]
            outputs = [a for a in outputs if a.dtype in DT]
            header = b"".join(_field(4, _tensor(a, False)) for a in inputs)
            header += b"".join(_field(3, _tensor(a, True, (node.name, i))) for i, a in enumerate(outputs))
            header = _field(1, b"2.0") + _field(2, int(time.time() * 1e6)) + header + _field(6, node.name.encode())
            self.task += 1
            name = "".join(c if c.isalnum() or c in "_-" else "_" for c in node.name)
            path = os.path.join(self.folder, f"{node.op_type}.{name}.{self.task}.2.{int(time.time() * 1e6) + self.task}")
            with open(path, "wb") as handle:
                handle.write(struct.pack("<Q", len(header)) + header)
                for array in inputs + outputs:
                    handle.write(np.ascontiguousarray(array).tobytes())

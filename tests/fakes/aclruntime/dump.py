"""The stand-in's operator dump, in the layout CANN writes (the kit's reader, openclip_ascend/ascend/dump.py,
names its sources): ``{dump_path}/{YYYYMMDDhhmmss}/{device}/{model_name}/{model_id}/{iteration}/``, one
iteration folder per model execution, then one file per op execution holding a little-endian uint64
header length, a ``toolkit.dumpdata.DumpData`` protobuf (encoded here by hand, data fields left empty)
and the raw input data, then the output data.

What atc does to the graph, in small: an elementwise op (Add, Sub, Mul, Div) whose input is the only use
of another op's single output is fused into that producer — the pair runs and is dumped once, named after
both (``{producer}{consumer}``, as in ``Sub_308Mul_309``), its output's ``original_op`` naming the consumer
(the ONNX node whose output it is); the producer's own output is not dumped. fp16 outputs of matrix products
are stored in FRACTAL_NZ (16 × 16 fractals), of convolutions in NC1HWC0 (C0 = 16); the rest in ND.
Softmax runs as an FFTS+ task split into two thread slices along axis 0 (when that axis has two rows or
more): two files ``{op_type}.{op_name}.{stream_id}.{task_id}.{timestamp}.4.{context_id}.{thread_id}.{device_id}``,
each with its slice of the data and an ``attr`` JSON (``slice_instance_num``, ``threadMode``, ``outputCutList``,
``output_tensor_slice``) as msaccucmp's FFTS parser reads it. Other ops: ``{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}``.

Values are what the OM computes (om.py: at the precision atc compiled it for); each is stored in the precision
the op that made it wrote it in — fp16 unless atc kept it fp32 — so an fp16 overflow shows as inf (bf16 values
are stored as float32). Which ops atc really fuses, slices or stores in which format depends on its
fusion passes and the chip; only the shapes of those outcomes are modelled here."""

import json
import os
import struct
import time
from dataclasses import dataclass

import numpy as np

DT = {np.dtype(np.float32): 1, np.dtype(np.float16): 2, np.dtype(np.int8): 3, np.dtype(np.uint8): 4,
      np.dtype(np.int32): 7, np.dtype(np.int64): 8, np.dtype(np.bool_): 11, np.dtype(np.float64): 12}
FORMAT_ND, FORMAT_NC1HWC0, FORMAT_FRACTAL_NZ = 2, 3, 29
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
MATRIX_PRODUCTS, CONVOLUTIONS, THREAD_SLICED = {"MatMul", "Gemm"}, {"Conv"}, {"Softmax"}
STREAM, FFTS_PLUS_TASK, CUBE = 2, 4, 16


@dataclass
class DumpedOp:
    """One op of the compiled model: an ONNX node, or a producer with the elementwise node fused into it."""

    op_type: str
    name: str
    inputs: list
    outputs: list
    original: str  # the ONNX node whose outputs this op's outputs are
    kernel: str  # the op type whose kernel computes it (decides the device format)


def fused_ops(nodes, graph_outputs):
    """The ops atc would run: each elementwise node whose input is the single use of a single-output
    producer is fused into that producer (each node in at most one pair)."""
    producers = {name: node for node in nodes for name in node.output}
    uses = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    pairs, paired = {}, set()
    for node in nodes:
        if node.op_type not in ELEMENTWISE or node.name in paired:
            continue
        for name in node.input:
            producer = producers.get(name)
            if (producer is not None and producer.name not in paired and len(producer.output) == 1
                    and uses.get(name) == 1 and name not in graph_outputs):
                pairs[node.name] = producer
                paired.update((node.name, producer.name))
                break
    producer_names = {producer.name for producer in pairs.values()}
    ops = []
    for node in nodes:
        if node.name in producer_names:
            continue
        producer = pairs.get(node.name)
        if producer is None:
            ops.append(DumpedOp(node.op_type, node.name, list(node.input), list(node.output), node.name, node.op_type))
        else:
            inputs = list(producer.input) + [name for name in node.input if name != producer.output[0]]
            ops.append(DumpedOp(producer.op_type, producer.name + node.name, inputs, list(node.output), node.name,
                                producer.op_type))
    return ops


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


def _padded(size):
    return -(-size // CUBE) * CUBE


def to_device(array, fmt):
    """``array`` in device format ``fmt``: FRACTAL_NZ (…, N1, M1, 16, 16) of the (…, M, N) matrix (a 1-D
    array is one row), NC1HWC0 (N, C1, H, W, 16); padding is zeros."""
    if fmt == FORMAT_FRACTAL_NZ:
        matrix = array.reshape(1, -1) if array.ndim == 1 else array
        *batch, rows, cols = matrix.shape
        padded = np.zeros((*batch, _padded(rows), _padded(cols)), array.dtype)
        padded[..., :rows, :cols] = matrix
        blocks = padded.reshape(*batch, _padded(rows) // CUBE, CUBE, _padded(cols) // CUBE, CUBE)
        lead = len(batch)
        return blocks.transpose(*range(lead), lead + 2, lead, lead + 1, lead + 3)
    if fmt == FORMAT_NC1HWC0:
        n, c, h, w = array.shape
        padded = np.zeros((n, _padded(c), h, w), array.dtype)
        padded[:, :c] = array
        return padded.reshape(n, _padded(c) // CUBE, CUBE, h, w).transpose(0, 1, 3, 4, 2)
    return array


def device_format(array, kernel):
    """The format atc's kernels leave an fp16 output in (ND for everything else)."""
    if array.dtype == np.float16 and kernel in MATRIX_PRODUCTS and array.ndim >= 1:
        return FORMAT_FRACTAL_NZ
    if array.dtype == np.float16 and kernel in CONVOLUTIONS and array.ndim == 4:
        return FORMAT_NC1HWC0
    return FORMAT_ND


def _tensor(array, fmt, is_output, original=None):
    """OpOutput / OpInput without its data (the data follows the header); returns (fields, device bytes)."""
    device = np.ascontiguousarray(to_device(array, fmt))
    fields = _field(1, DT[array.dtype]) + _field(2, fmt) + _field(3, _shape(device.shape))
    if is_output:
        if original:
            fields += _field(4, _field(1, original[0].encode()) + _field(2, original[1]))
        fields += _field(6, device.nbytes) + _field(7, _shape(array.shape))
    else:
        fields += _field(5, device.nbytes) + _field(6, _shape(array.shape))
    return fields, device.tobytes()


def _write(path, name, inputs, outputs, attr=None):
    """One dump file: header (inputs, outputs, op name, attr) then the data, inputs first."""
    header = _field(1, b"2.0") + _field(2, int(time.time() * 1e6))
    blobs = []
    for array, fmt in inputs:
        fields, data = _tensor(array, fmt, False)
        header += _field(4, fields)
        blobs.append(data)
    for array, fmt, original in outputs:
        fields, data = _tensor(array, fmt, True, original)
        header += _field(3, fields)
        blobs.append(data)
    header += _field(6, name.encode())
    if attr is not None:
        header += _field(7, _field(2, json.dumps(attr).encode()))
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header + b"".join(blobs))


class Dumper:
    """Writes one iteration folder per execution of the OM: each op's inputs and outputs as the OM holds them
    (``values``, computed at the OM's precision by om.CompiledModel; ``stored``: the precision each value's
    producer wrote it in — fp16 values are stored as fp16, so an overflow shows as inf)."""

    def __init__(self, om, dump_path, device_id, model_name):
        import onnx

        model = onnx.load(om["onnx"])
        nodes = [node for node in model.graph.node if node.op_type not in ("Constant",) and node.output]
        self.ops = fused_ops(nodes, {output.name for output in model.graph.output})
        self.initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
        self.root = os.path.join(dump_path, time.strftime("%Y%m%d%H%M%S"), str(device_id), model_name, "1")
        self.device_id = int(device_id)
        self.iteration = 0
        self.stamp = 0

    @staticmethod
    def _stored(array, precision):
        array = np.asarray(array)
        if array.dtype == np.float32 and precision == "fp16":
            with np.errstate(over="ignore"):
                return array.astype(np.float16)
        return array  # fp32, and bf16 values (already bf16-rounded) as fp32: numpy has no bfloat16 type

    def _timestamp(self):
        self.stamp += 1
        return int(time.time() * 1e6) + self.stamp

    def dump(self, feed, values, stored):
        values = {**values, **feed, **self.initializers}
        folder = os.path.join(self.root, str(self.iteration))
        self.iteration += 1
        os.makedirs(folder, exist_ok=True)
        for task, op in enumerate(self.ops, start=1):
            inputs = [a for a in (self._stored(values[name], stored.get(name)) for name in op.inputs if name in values)
                      if a.dtype in DT]
            outputs = [a for a in (self._stored(values[name], stored.get(name)) for name in op.outputs if name in values)
                       if a.dtype in DT]
            if op.op_type in THREAD_SLICED and outputs and all(a.ndim and a.shape[0] >= 2 for a in outputs):
                self._dump_thread_slices(folder, task, op, inputs, outputs)
                continue
            name = "".join(c if c.isalnum() or c in "_-" else "_" for c in op.name)
            _write(os.path.join(folder, f"{op.op_type}.{name}.{task}.{STREAM}.{self._timestamp()}"), op.name,
                   [(a, FORMAT_ND) for a in inputs],
                   [(a, device_format(a, op.kernel), (op.original, i)) for i, a in enumerate(outputs)])

    def _dump_thread_slices(self, folder, task, op, inputs, outputs):
        """Two FFTS+ thread slices along axis 0: each file holds its rows of every output (and of every
        input with as many rows), and the attr that tells how to join them."""
        rows = outputs[0].shape[0]
        bounds = [(0, rows - rows // 2), (rows - rows // 2, rows)]
        cut = [[2] + [1] * (a.ndim - 1) for a in outputs]
        tensor_slices = [[[{"lower": low, "higher": high}] + [{"lower": 0, "higher": d} for d in a.shape[1:]]
                          for a in outputs] for low, high in bounds]
        attr = {"slice_instance_num": 2, "threadMode": True, "outputCutList": cut, "output_tensor_slice": tensor_slices}
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in op.name)
        for thread, (low, high) in enumerate(bounds):
            sliced_inputs = [(a[low:high] if a.ndim and a.shape[0] == rows else a, FORMAT_ND) for a in inputs]
            sliced_outputs = [(a[low:high], FORMAT_ND, (op.original, i)) for i, a in enumerate(outputs)]
            stem = f"{op.op_type}.{name}.{STREAM}.{task}.{self._timestamp()}.{FFTS_PLUS_TASK}.{task}.{thread}"
            _write(os.path.join(folder, f"{stem}.{self.device_id}"), op.name, sliced_inputs, sliced_outputs, attr)

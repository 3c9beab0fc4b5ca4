"""Read an Ascend operator dump (ais_bench ``--dump 1`` / an ``acl.json`` dump) and line it up with the ONNX graph.

Layout, as CANN writes it and Ascend's own msprobe reads it (``AclDumpDataProcessor.cpp``, message
``toolkit.dumpdata.DumpData`` in ``AclDumpMsg.proto``):

- path ``{dump_path}/{time}/{device_id}/{model_name}/{model_id}/{iteration}/{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}``
  (the op name in the file name has ``/`` and ``.`` replaced, so the name inside the file is the one used);
- file: a little-endian uint64 header length, the ``DumpData`` protobuf of that length, then the raw
  data of every input in order, then of every output (each ``size`` bytes);
- ``DumpData``: 1 version, 2 dump_time, 3 output (OpOutput), 4 input (OpInput), 5 buffer, 6 op_name;
  ``OpOutput``: 1 data_type, 2 format, 3 shape, 4 original_op (1 name, 2 output_index, 3 data_type,
  4 format), 5 data, 6 size, 7 original_shape, 8 sub_format; ``OpInput``: 1 data_type, 2 format,
  3 shape, 4 data, 5 size, 6 original_shape, 7 sub_format; ``Shape``: 1 dim (repeated uint64).

The protobuf wire format is decoded here (a few dozen lines), so no generated module or protobuf
version is needed. Device formats are brought back to the ONNX layout: ND-like formats as they are,
``NC1HWC0`` and ``FRACTAL_NZ`` by their definitions; any other is reported, not guessed.
"""

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import KitError

# OutputDataType → numpy (BF16 is widened to float32 by hand)
DTYPES = {1: np.float32, 2: np.float16, 3: np.int8, 4: np.uint8, 5: np.int16, 6: np.uint16, 7: np.int32, 8: np.int64,
          9: np.uint32, 10: np.uint64, 11: np.bool_, 12: np.float64, 27: "bfloat16"}
# OutputFormat values whose memory order is the logical (ONNX) order
PLAIN_FORMATS = {0: "NCHW", 1: "NHWC", 2: "ND", 26: "MD", 27: "NDHWC", 30: "NCDHW", 34: "CN", 35: "NC", 47: "NCL"}
NC1HWC0, FRACTAL_NZ = 3, 29
FORMAT_NAMES = {**PLAIN_FORMATS, NC1HWC0: "NC1HWC0", 4: "FRACTAL_Z", FRACTAL_NZ: "FRACTAL_NZ", 12: "NC1HWC0_C04"}
SKIPPED_SUFFIXES = {".npy", ".csv", ".json", ".txt", ".bin", ".log"}


@dataclass
class DumpTensor:
    data_type: int = 0
    format: int = 2
    shape: list = field(default_factory=list)
    original_shape: list = field(default_factory=list)
    original_name: str = ""  # OpOutput.original_op: the graph op this output stands for
    original_index: int = 0
    size: int = 0
    raw: bytes = b""

    def array(self):
        """The tensor in the ONNX layout (float32 for float data)."""
        dtype = DTYPES.get(self.data_type)
        if dtype is None:
            raise KitError(f"dump data type {self.data_type} is not one the kit reads")
        if dtype == "bfloat16":
            values = (np.frombuffer(self.raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.frombuffer(self.raw, dtype=dtype)
        if values.dtype.kind == "f":
            values = values.astype(np.float32)
        return to_logical(values, self.format, self.shape, self.original_shape)


@dataclass
class DumpRecord:
    """One dumped op execution."""

    path: Path
    op_type: str
    op_name: str  # the name inside the file (the file name's, unmangled, when the file has none)
    timestamp: int
    inputs: list
    outputs: list


def to_logical(values, fmt, shape, original_shape):
    """Device layout → the graph's: NC1HWC0 (N, C1, H, W, C0) → NCHW cut to C; FRACTAL_NZ
    (…, N1, M1, M0, N0) → (…, M, N) cut to the original M, N; plain formats reshaped."""
    shape = [int(d) for d in shape]
    if fmt in PLAIN_FORMATS:
        return values.reshape(shape) if shape else values
    if fmt == NC1HWC0 and len(shape) == 5:
        n, c1, h, w, c0 = shape
        array = values.reshape(shape).transpose(0, 1, 4, 2, 3).reshape(n, c1 * c0, h, w)
        channels = int(original_shape[1]) if len(original_shape) == 4 else c1 * c0
        return array[:, :channels]
    if fmt == FRACTAL_NZ and len(shape) >= 4:
        *batch, n1, m1, m0, n0 = shape
        axes = list(range(len(batch)))
        array = values.reshape(shape).transpose(*axes, len(batch) + 1, len(batch) + 2, len(batch), len(batch) + 3)
        array = array.reshape(*batch, m1 * m0, n1 * n0)
        if len(original_shape) >= 2:
            m, n = int(original_shape[-2]), int(original_shape[-1])
            array = array[..., :m, :n].reshape([int(d) for d in original_shape])
        return array
    raise KitError(f"device format {FORMAT_NAMES.get(fmt, fmt)} with shape {shape} is not converted by the kit")


# --- protobuf wire format ---------------------------------------------------------------------------

def _varint(data, pos):
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data):
    """(field number, wire type, value) for every field of a message: varints as ints, length-delimited
    as bytes, fixed64/fixed32 as raw bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = bytes(data[pos:pos + length]), pos + length
            if pos > len(data):
                raise ValueError("truncated field")
        elif wire == 1:
            value, pos = bytes(data[pos:pos + 8]), pos + 8
        elif wire == 5:
            value, pos = bytes(data[pos:pos + 4]), pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def _dims(data):
    """Shape.dim: packed (proto3's default) or one varint per field."""
    dims = []
    for number, wire, value in _fields(data):
        if number != 1:
            continue
        if wire == 2:
            pos = 0
            while pos < len(value):
                dim, pos = _varint(value, pos)
                dims.append(dim)
        else:
            dims.append(value)
    return dims


def _tensor(data, is_output):
    """OpOutput (is_output) or OpInput: their fields differ from 4 on."""
    tensor = DumpTensor()
    numbers = {"data": 5, "size": 6, "original_shape": 7} if is_output else {"data": 4, "size": 5, "original_shape": 6}
    for number, _, value in _fields(data):
        if number == 1:
            tensor.data_type = value
        elif number == 2:
            tensor.format = value
        elif number == 3:
            tensor.shape = _dims(value)
        elif number == numbers["size"]:
            tensor.size = value
        elif number == numbers["original_shape"]:
            tensor.original_shape = _dims(value)
        elif number == numbers["data"]:
            tensor.raw = value
        elif is_output and number == 4:
            for sub, _, item in _fields(value):
                if sub == 1:
                    tensor.original_name = item.decode("utf-8", "replace")
                elif sub == 2:
                    tensor.original_index = item
    return tensor


def read_dump_file(path):
    """One dump file → DumpRecord; a file that is not one is a one-line KitError."""
    path = Path(path)
    blob = path.read_bytes()
    tokens = path.name.split(".")
    try:
        if len(tokens) < 5:
            raise ValueError("the name is not {op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}")
        (header,) = struct.unpack_from("<Q", blob, 0)
        if 8 + header > len(blob):
            raise ValueError(f"header length {header} runs past the file's {len(blob)} bytes")
        inputs, outputs, name = [], [], ""
        for number, _, value in _fields(blob[8:8 + header]):
            if number == 3:
                outputs.append(_tensor(value, True))
            elif number == 4:
                inputs.append(_tensor(value, False))
            elif number == 6:
                name = value.decode("utf-8", "replace")
        offset = 8 + header
        for tensor in inputs + outputs:  # data after the header: inputs, then outputs
            if not tensor.raw:
                tensor.raw = blob[offset:offset + tensor.size]
                if len(tensor.raw) != tensor.size:
                    raise ValueError(f"data runs past the end of the file ({tensor.size} bytes expected)")
            offset += tensor.size
        timestamp = int(tokens[-1]) if tokens[-1].isdigit() else 0
    except (ValueError, struct.error) as exc:
        raise KitError(f"{path}: not an Ascend dump file ({exc})") from exc
    return DumpRecord(path, tokens[0], name or ".".join(tokens[1:-3]), timestamp, inputs, outputs)


def dump_files(folder):
    """Every dump file under ``folder`` (ais_bench's ``{output}/dump``, or any level below it)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KitError(f"{folder}: no such folder; give the dump folder ais_bench --dump 1 wrote ({{output}}/dump)")
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix not in SKIPPED_SUFFIXES
                   and len(path.name.split(".")) >= 5 and path.name.split(".")[-1].isdigit())
    if not files:
        raise KitError(f"{folder}: no dump files ({{op_type}}.{{op_name}}.{{task_id}}.{{stream_id}}.{{timestamp}}); "
                       "run the OM with ais_bench --dump 1 (or an acl.json dump config) first")
    return files


def mangled(name):
    """An op name as it appears in a dump file name: every character outside [A-Za-z0-9_-] as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def outputs_by_node(records, graph):
    """{ONNX output name: [array per execution, in time order]} for dumped outputs that name a node of
    ``graph`` (by OpOutput.original_op, else the op's own name; exact, else as mangled), and the names of
    dumped ops that match none (fused or renamed by atc)."""
    nodes = {node.name: node for node in graph.node if node.name}
    by_mangled = {mangled(name): node for name, node in nodes.items()}
    found, unmatched = {}, set()
    for record in sorted(records, key=lambda r: r.timestamp):
        for slot, tensor in enumerate(record.outputs):
            name = tensor.original_name or record.op_name
            node = nodes.get(name) or by_mangled.get(mangled(name))
            index = tensor.original_index if tensor.original_name else slot
            if node is None or index >= len(node.output):
                unmatched.add(record.op_name)
                continue
            found.setdefault(node.output[index], []).append(tensor)
    return found, sorted(unmatched)


def write_acl_json(path, dump_path, model_name):
    """The acl.json ais_bench ``--dump 1`` writes: dump every op's inputs and outputs of ``model_name``
    (the OM's file name without extension) into ``dump_path``."""
    from .files import write_json

    Path(dump_path).mkdir(parents=True, exist_ok=True)
    write_json(path, {"dump": {"dump_list": [{"model_name": model_name}], "dump_mode": "all",
                               "dump_path": str(dump_path)}})
    return Path(path)

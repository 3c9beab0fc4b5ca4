"""Read an Ascend operator dump (ais_bench ``--dump 1`` / an ``acl.json`` dump) and line it up with the ONNX graph.

Layout, as CANN writes it and Ascend's own tools read it (msprobe ``AclDumpMsg.proto``; msaccucmp's
file-name patterns, ``ffts_parser.py`` and format converters; MindStudio's dump naming table):

- path ``{dump_path}/{time}/{device_id}/{model_name}/{model_id}/{iteration}/{file}``, the file named
  ``{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}``, on older CANN ``{op_type}.{op_name}.{task_id}.{timestamp}``,
  and for FFTS+ tasks ``{op_type}.{op_name}.[{stream_id}.]{task_id}.{timestamp}.{task_type}.{context_id}.{thread_id}.{device_id}``
  (a manually sliced op's name ends in ``_lxslice{N}``). In the name field ``/``, ``.``, ``\\`` and spaces are
  written as ``_``, so the name inside the file is the one used;
- file: a little-endian uint64 header length, the ``DumpData`` protobuf of that length, then the raw
  data of every input in order, then of every output (each ``size`` bytes);
- ``DumpData``: 1 version, 2 dump_time, 3 output (OpOutput), 4 input (OpInput), 5 buffer, 6 op_name,
  7 attr (OpAttr: 1 name, 2 value — a JSON object for FFTS+ slices), 8 space;
  ``OpOutput``: 1 data_type, 2 format, 3 shape, 4 original_op (1 name, 2 output_index, 3 data_type,
  4 format), 5 data, 6 size, 7 original_shape, 8 sub_format; ``OpInput``: 1 data_type, 2 format,
  3 shape, 4 data, 5 size, 6 original_shape, 7 sub_format; ``Shape``: 1 dim (repeated uint64).

The protobuf wire format is decoded here (a few dozen lines), so no generated module or protobuf
version is needed. Device formats are brought back to the ONNX layout: ND-like formats as they are,
``NC1HWC0`` and ``FRACTAL_NZ`` by the rules of msprobe's ``AclTensor.cpp``; any other is reported, not
guessed. The thread slices of one FFTS+ op execution are joined along the axis their ``outputCutList``
attribute names, as msaccucmp does, or refused when it names none.
"""

import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..files import KitError

# OutputDataType → numpy (BF16 is widened to float32 by hand)
DTYPES = {1: np.float32, 2: np.float16, 3: np.int8, 4: np.uint8, 5: np.int16, 6: np.uint16, 7: np.int32, 8: np.int64,
          9: np.uint32, 10: np.uint64, 11: np.bool_, 12: np.float64, 27: "bfloat16"}
# OutputFormat values whose memory order is the logical (ONNX) order
PLAIN_FORMATS = {0: "NCHW", 1: "NHWC", 2: "ND", 26: "MD", 27: "NDHWC", 30: "NCDHW", 34: "CN", 35: "NC", 47: "NCL"}
NC1HWC0, FRACTAL_NZ = 3, 29
FORMAT_NAMES = {**PLAIN_FORMATS, NC1HWC0: "NC1HWC0", 4: "FRACTAL_Z", FRACTAL_NZ: "FRACTAL_NZ", 12: "NC1HWC0_C04"}
FFTS_PLUS_TASK = 4  # task_type of an FFTS+ task (msaccucmp: AICORE 0, AICPU 1, DEBUG 2, HCCL 3, FFTSPLUS 4)
LXSLICE = re.compile(r"_lxslice(\d+)$")
NAME_FORMS = ("{op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}, {op_type}.{op_name}.{task_id}.{timestamp} or "
              "{op_type}.{op_name}.[{stream_id}.]{task_id}.{timestamp}.{task_type}.{context_id}.{thread_id}.{device_id}")


@dataclass(frozen=True)
class DumpName:
    """The fields of a dump file's name; ``stream_id`` is None in the old 4-field form, the FFTS+ fields
    are None outside the FFTS+ form, ``lxslice`` is the N of a name ending in ``_lxslice{N}``."""

    op_type: str
    op_name: str
    task_id: int
    stream_id: Optional[int]
    timestamp: int
    task_type: Optional[int] = None
    context_id: Optional[int] = None
    thread_id: Optional[int] = None
    device_id: Optional[int] = None
    lxslice: Optional[int] = None

    @property
    def base_name(self):
        """The name field without its ``_lxslice{N}`` part."""
        return LXSLICE.sub("", self.op_name)


def parse_dump_name(name):
    """A dump file name → DumpName, or None for any other file. The op type and name fields hold no
    '.' (CANN writes it as '_'), so the fields are told apart by how many numbers follow them."""
    parts = name.split(".")
    if len(parts) < 4 or not all(part.isdigit() for part in parts[2:]) or not parts[0] or not parts[1]:
        return None
    numbers = [int(part) for part in parts[2:]]
    slice_number = LXSLICE.search(parts[1])
    lxslice = int(slice_number.group(1)) if slice_number else None
    if len(numbers) == 2:
        task, timestamp = numbers
        return DumpName(parts[0], parts[1], task, None, timestamp, lxslice=lxslice)
    if len(numbers) == 3:
        task, stream, timestamp = numbers
        return DumpName(parts[0], parts[1], task, stream, timestamp, lxslice=lxslice)
    if len(numbers) in (6, 7):
        stream = numbers.pop(0) if len(numbers) == 7 else None
        task, timestamp, task_type, context, thread, device = numbers
        return DumpName(parts[0], parts[1], task, stream, timestamp, task_type, context, thread, device, lxslice)
    return None


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

    def stored(self):
        """The data as stored on the device (its own layout; bfloat16 as uint16 bit patterns)."""
        dtype = DTYPES.get(self.data_type)
        if dtype is None:
            raise KitError(f"dump data type {self.data_type} is not one the kit reads")
        values = np.frombuffer(self.raw, dtype=np.uint16 if dtype == "bfloat16" else dtype)
        shape = [int(d) for d in self.shape]
        return values.reshape(shape) if shape and int(np.prod(shape)) == values.size else values

    def array(self):
        """The tensor in the ONNX layout (float32 for float data)."""
        values = self.stored().ravel()
        if DTYPES[self.data_type] == "bfloat16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        if values.dtype.kind == "f":
            values = values.astype(np.float32)
        return to_logical(values, self.format, self.shape, self.original_shape)


@dataclass
class DumpRecord:
    """One dumped op execution (for an FFTS+ op split into thread slices: the slices joined)."""

    path: Path
    name: DumpName
    op_name: str  # the name inside the file (the file name's when the file has none)
    inputs: list
    outputs: list
    attr: dict = field(default_factory=dict)  # DumpData.attr, JSON values decoded (FFTS+ slicing)

    @property
    def op_type(self):
        return self.name.op_type

    @property
    def timestamp(self):
        return self.name.timestamp


def to_logical(values, fmt, shape, original_shape):
    """Device layout → the graph's: NC1HWC0 (N, C1, H, W, C0) → NCHW cut to C; FRACTAL_NZ
    (…, N1, M1, M0, N0) → (…, M, N) cut to the original M, N — a 1-D original (n) is one row (1, n),
    as msprobe's ``TransShapeToHwNz`` maps it; plain formats reshaped."""
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
        host = [int(d) for d in original_shape]
        if not host:
            return array
        rows, cols = (1, host[0]) if len(host) == 1 else host[-2:]
        cut = array[..., :rows, :cols]
        if cut.size != int(np.prod(host)):
            raise KitError(f"FRACTAL_NZ tensor of device shape {shape} does not hold original shape {host}")
        return cut.reshape(host)
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


def _attr(data, attr):
    """One OpAttr into ``attr``: a JSON object's keys (how FFTS+ slicing is described), else name → text."""
    name, value = "", ""
    for number, _, item in _fields(data):
        if number == 1:
            name = item.decode("utf-8", "replace")
        elif number == 2:
            value = item.decode("utf-8", "replace")
    try:
        decoded = json.loads(value)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        attr.update(decoded)
    else:
        attr[name] = value


def read_dump_file(path):
    """One dump file → DumpRecord; a file that is not one is a one-line KitError."""
    path = Path(path)
    name = parse_dump_name(path.name)
    if name is None:
        raise KitError(f"{path}: not an Ascend dump file name ({NAME_FORMS})")
    blob = path.read_bytes()
    try:
        (header,) = struct.unpack_from("<Q", blob, 0)
        if 8 + header > len(blob):
            raise ValueError(f"header length {header} runs past the file's {len(blob)} bytes")
        inputs, outputs, op_name, attr = [], [], "", {}
        for number, _, value in _fields(blob[8:8 + header]):
            if number == 3:
                outputs.append(_tensor(value, True))
            elif number == 4:
                inputs.append(_tensor(value, False))
            elif number == 6:
                op_name = value.decode("utf-8", "replace")
            elif number == 7:
                _attr(value, attr)
        offset = 8 + header
        for tensor in inputs + outputs:  # data after the header: inputs, then outputs
            if not tensor.raw:
                tensor.raw = blob[offset:offset + tensor.size]
                if len(tensor.raw) != tensor.size:
                    raise ValueError(f"data runs past the end of the file ({tensor.size} bytes expected)")
            offset += tensor.size
    except (ValueError, struct.error) as exc:
        raise KitError(f"{path}: not an Ascend dump file ({exc})") from exc
    return DumpRecord(path, name, op_name or name.op_name, inputs, outputs, attr)


def dump_files(folder):
    """Every dump file under ``folder`` (ais_bench's ``{output}/dump``, or any level below it), in any of
    the name forms CANN writes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise KitError(f"{folder}: no such folder; give the dump folder ais_bench --dump 1 wrote ({{output}}/dump)")
    files = sorted(path for path in folder.rglob("*") if path.is_file() and parse_dump_name(path.name))
    if not files:
        raise KitError(f"{folder}: no dump files ({NAME_FORMS}); run the OM with ais_bench --dump 1 (or an "
                       "acl.json dump config) first")
    return files


# --- FFTS+ thread slices ----------------------------------------------------------------------------

def _slice_id(record):
    """Which slice of its op a record is: the ``_lxslice{N}`` of a manually sliced op, else the thread id."""
    return record.name.lxslice if record.name.lxslice is not None else record.name.thread_id


def _slice_shapes(record, position):
    """The shape of each output of one slice: the FFTS+ auto mode's ``output_tensor_slice`` bounds when
    the attribute gives them (msaccucmp ``calculate_auto_mode_shape``), else the shape in the file."""
    bounds = record.attr.get("output_tensor_slice") if record.attr.get("threadMode") else None
    if bounds:
        return [[int(dim["higher"]) - int(dim["lower"]) for dim in output] for output in bounds[position]]
    return [[int(d) for d in tensor.shape] for tensor in record.outputs]


def _join_slices(slices):
    """One op execution from its thread slices (ordered by slice id): each output concatenated along
    the first axis its ``outputCutList`` entry cuts (not 1); an output no axis cuts is taken from the
    first slice, as msaccucmp's FFTS parser does. Refused when the split axis cannot be known."""
    first = slices[0]
    where = f"{first.path.parent}: {len(slices)} thread slices of {first.op_type} {first.name.base_name}"
    expected = first.attr.get("slice_instance_num")
    if expected is not None and int(expected) != len(slices):
        raise KitError(f"{where}, but its slice_instance_num is {expected}; the dump is incomplete — dump it again")
    cuts = [[axis for axis, parts in enumerate(output) if int(parts) != 1]
            for output in first.attr.get("outputCutList") or []]
    if not any(cuts) or len(cuts) != len(first.outputs):
        raise KitError(f"{where} name no split axis (no outputCutList attribute for its {len(first.outputs)} "
                       "output(s)); the kit cannot join them — dump with FFTS+ slicing off to compare this op")
    if any(len(piece.outputs) != len(first.outputs) for piece in slices):
        raise KitError(f"{where} hold different numbers of outputs; the dump is damaged — dump it again")
    shapes = [_slice_shapes(piece, position) for position, piece in enumerate(slices)]
    outputs = []
    for index, (tensor, axes) in enumerate(zip(first.outputs, cuts)):
        if not axes:
            outputs.append(tensor)
            continue
        parts = [piece.outputs[index].stored().ravel() for piece in slices]
        if any(part.size != int(np.prod(shapes[position][index])) for position, part in enumerate(parts)):
            raise KitError(f"{where}: output {index}'s data does not fill its slice shape; the dump is damaged")
        parts = [part.reshape(shapes[position][index]) for position, part in enumerate(parts)]
        joined = np.concatenate(parts, axis=axes[0])
        outputs.append(replace(tensor, shape=list(joined.shape), raw=joined.tobytes(), size=joined.nbytes))
    name = replace(first.name, timestamp=min(piece.timestamp for piece in slices))
    return DumpRecord(first.path, name, LXSLICE.sub("", first.op_name), first.inputs, outputs, first.attr)


def join_thread_slices(records):
    """``records`` with the thread slices of each FFTS+ op execution (same folder, op, stream and task,
    different thread ids or ``_lxslice`` numbers) joined into one record; other records unchanged."""
    groups, joined = {}, []
    for record in records:
        name = record.name
        if name.task_type != FFTS_PLUS_TASK and name.lxslice is None:
            joined.append(record)
            continue
        key = (record.path.parent, name.op_type, name.base_name, name.stream_id, name.task_id)
        groups.setdefault(key, []).append(record)
    for slices in groups.values():
        slices.sort(key=_slice_id)
        ids = [_slice_id(piece) for piece in slices]
        if len(set(ids)) != len(ids):
            raise KitError(f"{slices[0].path.parent}: {slices[0].op_type} {slices[0].name.base_name} has thread "
                           f"slices {ids} (a thread repeated) in one iteration folder; the kit cannot tell its "
                           "executions apart — give one dump iteration per folder")
        joined.append(slices[0] if len(slices) == 1 else _join_slices(slices))
    return joined


def mangled(name):
    """An op name as it appears in a dump file name: every character outside [A-Za-z0-9_-] as ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def outputs_by_node(records, graph):
    """{ONNX output name: [tensor per execution, in time order]} for dumped outputs that name a node of
    ``graph`` (by OpOutput.original_op, else the op's own name; exact, else as mangled), and the names of
    dumped ops that match none (fused or renamed by atc). Thread slices are joined first, so each
    execution counts once."""
    nodes = {node.name: node for node in graph.node if node.name}
    by_mangled = {mangled(name): node for name, node in nodes.items()}
    found, unmatched = {}, set()
    for record in sorted(join_thread_slices(records), key=lambda r: r.timestamp):
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
    from ..files import write_json

    Path(dump_path).mkdir(parents=True, exist_ok=True)
    write_json(path, {"dump": {"dump_list": [{"model_name": model_name}], "dump_mode": "all",
                               "dump_path": str(dump_path)}})
    return Path(path)

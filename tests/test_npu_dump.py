"""The NPU operator-dump reader: files encoded by the real protobuf library read back field for field,
every file-name form CANN writes parsed, FFTS+ thread slices joined into one execution, device formats
brought back to the graph's layout by Ascend's own index rules, bad files refused in one line, and locate on
the stand-in OM's dump (fused ops, device formats, thread slices) finding the planted overflow where the
fp16 simulation finds it."""

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from openclip_ascend.ascend.dump import (
    FRACTAL_NZ,
    NC1HWC0,
    dump_files,
    mangled,
    outputs_by_node,
    parse_dump_name,
    read_dump_file,
    to_logical,
)
from openclip_ascend.files import KitError

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
DATA_TYPES = {np.dtype(np.float32): 1, np.dtype(np.float16): 2, np.dtype(np.int8): 3}


def dump_data_class():
    """``toolkit.dumpdata.DumpData`` built by the protobuf library from the message definitions the
    reader's docstring cites (field numbers and types as in AclDumpMsg.proto / msaicerr's dump_data_pb2)."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="acl_dump_test.proto", package="toolkit.dumpdata", syntax="proto3")

    def message(name, *fields):
        proto = file.message_type.add(name=name)
        for number, field_name, kind, type_name, repeated in fields:
            proto.field.add(name=field_name, number=number, type=kind, type_name=type_name,
                            label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)

    u64, u32, i32, s, b, m = F.TYPE_UINT64, F.TYPE_UINT32, F.TYPE_INT32, F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE
    ns = ".toolkit.dumpdata."
    message("Shape", (1, "dim", u64, None, True))
    message("OriginalOp", (1, "name", s, None, False), (2, "output_index", u32, None, False),
            (3, "data_type", i32, None, False), (4, "format", i32, None, False))
    tensor = [(1, "data_type", i32, None, False), (2, "format", i32, None, False), (3, "shape", m, ns + "Shape", False)]
    message("OpOutput", *tensor, (4, "original_op", m, ns + "OriginalOp", False), (5, "data", b, None, False),
            (6, "size", u64, None, False), (7, "original_shape", m, ns + "Shape", False),
            (8, "sub_format", i32, None, False))
    message("OpInput", *tensor, (4, "data", b, None, False), (5, "size", u64, None, False),
            (6, "original_shape", m, ns + "Shape", False), (7, "sub_format", i32, None, False))
    message("OpAttr", (1, "name", s, None, False), (2, "value", s, None, False))
    message("DumpData", (1, "version", s, None, False), (2, "dump_time", u64, None, False),
            (3, "output", m, ns + "OpOutput", True), (4, "input", m, ns + "OpInput", True),
            (6, "op_name", s, None, False), (7, "attr", m, ns + "OpAttr", True))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName("toolkit.dumpdata.DumpData")
    try:
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:  # protobuf < 4.21
        from google.protobuf.message_factory import MessageFactory

        return MessageFactory(pool).GetPrototype(descriptor)
    return GetMessageClass(descriptor)


def write_dump(path, op_name, outputs, attr=None):
    """A dump file encoded by the protobuf library: ``outputs`` are (device data, format, device shape,
    original shape, original_op name or "") — the data after the header, as CANN writes it."""
    message = dump_data_class()(version="2.0", dump_time=1, op_name=op_name)
    data = b""
    for values, fmt, shape, original_shape, original in outputs:
        out = message.output.add(data_type=DATA_TYPES[values.dtype], format=fmt, size=values.nbytes)
        out.shape.dim.extend(shape)
        out.original_shape.dim.extend(original_shape)
        if original:
            out.original_op.name = original
        data += np.ascontiguousarray(values).tobytes()
    if attr is not None:
        message.attr.add(name="ffts", value=json.dumps(attr))
    header = message.SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def nz_by_index_rule(host, n0=16):
    """FRACTAL_NZ data of ``host`` placed by msprobe AclTensor.cpp's rule (FRAC_NZ_TO_NCHW read backwards):
    host viewed as (times, h, w), a 1-D host as (1, 1, n); element (t, r, c) at
    t·W1·H1·H0·W0 + (c // W0)·H1·H0·W0 + r·W0 + c % W0, with H0 = 16, W0 = ``n0``. Returns the flat device
    data and the device shape."""
    times, h, w = (1, 1, host.shape[0]) if host.ndim == 1 else (int(np.prod(host.shape[:-2])), *host.shape[-2:])
    h1, w1 = -(-h // 16), -(-w // n0)
    block = w1 * h1 * 16 * n0
    t, r, c = np.meshgrid(np.arange(times), np.arange(h), np.arange(w), indexing="ij")
    device = np.zeros(times * block, host.dtype)
    device[(t * block + (c // n0) * (h1 * 16 * n0) + r * n0 + c % n0).ravel()] = host.reshape(times, h, w).ravel()
    return device, [*host.shape[:-2], w1, h1, 16, n0]


def nc1hwc0_by_index_rule(host, c0=16):
    """NC1HWC0 data of NCHW ``host`` placed by AclTensor.cpp's NC1HWC0_TO_NCHW rule: element (n, c, h, w) at
    n·C1·H·W·C0 + (c // C0)·H·W·C0 + h·W·C0 + w·C0 + c % C0."""
    n_, c_, h_, w_ = host.shape
    c1 = -(-c_ // c0)
    n, c, h, w = np.meshgrid(*(np.arange(d) for d in host.shape), indexing="ij")
    device = np.zeros(n_ * c1 * h_ * w_ * c0, host.dtype)
    device[(n * c1 * h_ * w_ * c0 + (c // c0) * h_ * w_ * c0 + h * w_ * c0 + w * c0 + c % c0).ravel()] = host.ravel()
    return device, [n_, c1, h_, w_, c0]


def test_a_file_the_protobuf_library_encoded_reads_back(tmp_path):
    DumpData = dump_data_class()
    x = np.arange(6, dtype=np.float16).reshape(2, 3)
    y = (np.arange(12, dtype=np.float32) - 5.5).reshape(3, 4)
    message = DumpData(version="2.0", dump_time=1700000000123456, op_name="/visual/transformer/resblocks.0/ln_2/Add")
    message.input.add(data_type=2, format=2, size=x.nbytes).shape.dim.extend(x.shape)
    out = message.output.add(data_type=1, format=2, size=y.nbytes)
    out.shape.dim.extend(y.shape)
    out.original_shape.dim.extend(y.shape)
    out.original_op.name, out.original_op.output_index = "/visual/transformer/resblocks.0/ln_2/Add", 0
    header = message.SerializeToString()
    path = tmp_path / f"Add.{mangled(message.op_name)}.7.2.1700000000123456"
    path.write_bytes(struct.pack("<Q", len(header)) + header + x.tobytes() + y.tobytes())

    record = read_dump_file(path)
    assert record.op_type == "Add" and record.op_name == message.op_name and record.timestamp == 1700000000123456
    assert len(record.inputs) == 1 and len(record.outputs) == 1
    assert np.array_equal(record.inputs[0].array(), x.astype(np.float32))
    assert np.array_equal(record.outputs[0].array(), y)
    assert record.outputs[0].original_name == message.op_name and record.outputs[0].shape == [3, 4]
    assert dump_files(tmp_path) == [path]

    path.write_bytes(struct.pack("<Q", len(header)) + header + x.tobytes())  # the output's data cut off
    with pytest.raises(KitError, match="not an Ascend dump file .*runs past the end"):
        read_dump_file(path)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(KitError, match="no dump files"):
        dump_files(tmp_path / "nothing")


@pytest.mark.parametrize("name, fields", [
    ("Add._blocks_0_ln_2_Add.7.2.1700000000123456",  # {op_type}.{op_name}.{task_id}.{stream_id}.{timestamp}
     dict(op_name="_blocks_0_ln_2_Add", task_id=7, stream_id=2, timestamp=1700000000123456, thread_id=None)),
    ("Add._blocks_0_ln_2_Add.7.1700000000123456",  # older CANN: no stream id
     dict(task_id=7, stream_id=None, timestamp=1700000000123456)),
    ("Softmax.attn_Softmax_1.9.1700000000000321.4.330.1.3",  # FFTS+ without the stream id
     dict(op_name="attn_Softmax_1", task_id=9, stream_id=None, timestamp=1700000000000321, task_type=4,
          context_id=330, thread_id=1, device_id=3, lxslice=None)),
    ("Conv2D.Conv2D_lxslice1.2.9.1670205069987340.4.330.0.0",  # FFTS+ with the stream id, manual slice 1
     dict(op_name="Conv2D_lxslice1", base_name="Conv2D", stream_id=2, task_id=9, timestamp=1670205069987340,
          task_type=4, context_id=330, thread_id=0, device_id=0, lxslice=1)),
])
def test_every_documented_dump_file_name_is_parsed(name, fields):
    parsed = parse_dump_name(name)
    assert parsed.op_type == name.split(".")[0]
    assert {key: getattr(parsed, key) for key in fields} == fields


def test_dump_files_finds_every_form_and_nothing_else(tmp_path):
    names = ["Add.a_b.7.2.1700000000000001", "Add.a_b.7.1700000000000002", "Softmax.s.9.1700000000000003.4.1.0.0",
             "Conv2D.c_lxslice0.2.9.1700000000000004.4.330.0.0"]
    for name in names:
        write_dump(tmp_path / "0" / name, "a", [(np.zeros(2, np.float32), 2, [2], [2], "")])
    for other in ["mapping.csv", "Add.a_b.7", "Add.a_b.1.2.3.4", "x_0.npy", "acl.json", "Add.a_b.7.x.1700000000000001"]:
        (tmp_path / "0" / other).write_text("not a dump")
    assert sorted(path.name for path in dump_files(tmp_path)) == sorted(names)
    with pytest.raises(KitError, match="not an Ascend dump file name"):
        read_dump_file(tmp_path / "0" / "Add.a_b.1.2.3.4")


def test_device_formats_come_back_by_ascends_index_rules():
    rng = np.random.default_rng(0)
    for host in (rng.standard_normal(100).astype(np.float16),  # 1-D: one row (1, 1, n)
                 rng.standard_normal((20, 40)).astype(np.float16), rng.standard_normal((3, 20, 40)).astype(np.float32)):
        device, shape = nz_by_index_rule(host)
        back = to_logical(device, FRACTAL_NZ, shape, host.shape)
        assert back.shape == host.shape and np.array_equal(back, host.astype(np.float32))
    host = rng.integers(-128, 128, (2, 20, 70)).astype(np.int8)  # int8: N0 = 32
    device, shape = nz_by_index_rule(host, n0=32)
    assert np.array_equal(to_logical(device, FRACTAL_NZ, shape, host.shape), host)
    host = rng.standard_normal((2, 20, 3, 5)).astype(np.float16)
    device, shape = nc1hwc0_by_index_rule(host)
    assert np.array_equal(to_logical(device, NC1HWC0, shape, host.shape), host)
    with pytest.raises(KitError, match="device format FRACTAL_Z .* is not converted"):
        to_logical(np.zeros(16, np.float32), 4, [1, 1, 16, 1], [16])


NODE = "/blocks.0/mlp/c_fc/MatMul"
GRAPH = SimpleNamespace(node=[SimpleNamespace(name=NODE, output=["fc"])])


def _nz_slices(host, rows):
    """The FRACTAL_NZ data of ``host`` (batch, M, N) cut along axis 0 at ``rows``: [(data, device shape)]."""
    device, shape = nz_by_index_rule(host)
    device = device.reshape(shape)
    return [(part, list(part.shape)) for part in np.split(device, [rows])]


def test_thread_slices_are_joined_into_one_execution_in_time_order(tmp_path):
    """Two executions of one FFTS+ op, each in two thread slices along axis 0: auto mode (slice bounds in
    ``output_tensor_slice``, no stream id in the name) and manual mode (``_lxslice{N}`` names). Each comes
    back whole, once, and the executions in the order of their timestamps, not of folders or device ids."""
    rng = np.random.default_rng(1)
    first, second = (rng.standard_normal((4, 20, 40)).astype(np.float16) for _ in range(2))
    cut = {"slice_instance_num": 2, "outputCutList": [[2, 1, 1, 1, 1]]}
    earlier = tmp_path / "dump" / "1"  # the earlier execution sits in the later folder
    (a, a_shape), (b, b_shape) = _nz_slices(first, 3)
    full_shape = [4] + a_shape[1:]
    bounds = [[[{"lower": low, "higher": high}] + [{"lower": 0, "higher": d} for d in a_shape[1:]]]
              for low, high in ((0, 3), (3, 4))]
    auto = {**cut, "threadMode": True, "output_tensor_slice": bounds}
    # thread 1 finished first: slices are ordered by thread id, not time; the file shape is the whole op's
    write_dump(earlier / "MatMul.x.9.1700000000000100.4.11.1.5", "x", [(b, FRACTAL_NZ, full_shape, first.shape, NODE)],
               auto)
    write_dump(earlier / "MatMul.x.9.1700000000000150.4.11.0.5", "x", [(a, FRACTAL_NZ, full_shape, first.shape, NODE)],
               auto)
    later = tmp_path / "dump" / "0"
    manual = {**cut, "threadMode": False}
    (c, c_shape), (d, d_shape) = _nz_slices(second, 1)
    write_dump(later / f"MatMul.{mangled(NODE)}_lxslice1.2.9.1700000000000300.4.11.0.5", NODE + "_lxslice1",
               [(d, FRACTAL_NZ, d_shape, second.shape, "")], manual)
    write_dump(later / f"MatMul.{mangled(NODE)}_lxslice0.2.9.1700000000000200.4.11.0.5", NODE + "_lxslice0",
               [(c, FRACTAL_NZ, c_shape, second.shape, "")], manual)

    records = [read_dump_file(path) for path in dump_files(tmp_path / "dump")]
    found, unmatched = outputs_by_node(records, GRAPH)
    assert unmatched == [] and list(found) == ["fc"] and len(found["fc"]) == 2
    assert np.array_equal(found["fc"][0].array(), first.astype(np.float32))
    assert np.array_equal(found["fc"][1].array(), second.astype(np.float32))


@pytest.mark.parametrize("attr, threads, message", [
    (None, (0, 1), "name no split axis"),
    ({"slice_instance_num": 2, "outputCutList": [[1, 1, 1, 1, 1]]}, (0, 1), "name no split axis"),
    ({"slice_instance_num": 3, "outputCutList": [[2, 1, 1, 1, 1]]}, (0, 1), "slice_instance_num is 3"),
    ({"slice_instance_num": 2, "outputCutList": [[2, 1, 1, 1, 1]]}, (0, 0), "a thread repeated"),
])
def test_thread_slices_that_cannot_be_joined_are_refused(tmp_path, attr, threads, message):
    host = np.ones((2, 16, 16), np.float16)
    for thread, stamp, (part, shape) in zip(threads, (100, 200), _nz_slices(host, 1)):
        write_dump(tmp_path / f"MatMul.x.2.9.1700000000000{stamp}.4.11.{thread}.0", "x",
                   [(part, FRACTAL_NZ, shape, host.shape, NODE)], attr)
    records = [read_dump_file(path) for path in dump_files(tmp_path)]
    with pytest.raises(KitError, match=message):
        outputs_by_node(records, GRAPH)


def _fakes_env():
    return {**os.environ, "PATH": f"{FAKES / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}", "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests/data/npu_smi/910B4.txt")}


def test_locate_on_the_npu_dump_finds_the_planted_overflow(planted_weights, prep_dir, tmp_path):
    """The planted model compiled to an fp16 OM (stand-in atc) and run with the dump on: the first jump is
    the planted LayerNorm, as in the simulation; the same dump read again offline gives the same table."""
    from openclip_ascend.evaluate.precision import export_for_precision
    from openclip_ascend.model.loading import TINY_MODEL

    env = _fakes_env()
    prefix = export_for_precision(TINY_MODEL, planted_weights, tmp_path / "export")
    subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), "--onnx-prefix", str(prefix), "--towers",
                    "vision", "--batch-sizes", "2", "--output-dir", str(tmp_path / "om")], check=True,
                   capture_output=True, env=env)
    om = next((tmp_path / "om").glob("*_vision_bs2.om"))
    common = ["locate", "--model-name", TINY_MODEL, "--pretrained", planted_weights, "--prep", prep_dir, "--tower",
              "vision", "--onnx", f"{prefix}_vision.onnx", "--samples", 4]
    result = subprocess.run([sys.executable, str(ROOT / "openclip_precision.py"), *map(str, common), "--output-dir",
                             str(tmp_path / "npu"), "--om", str(om)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "npu" / "node_errors_vision.csv")))
    first = next(row for row in rows if row["jump"] == "1")
    assert first["scope"].endswith("resblocks.0/ln_2") and first["overflow"] == "1"
    summary = (tmp_path / "npu" / "node_errors_vision.md").read_text()
    assert summary.startswith(f"# NPU dump of {om.name} against fp32: vision tower")
    assert "float nodes compared with the dump of 2 execution(s)" in summary

    (folder,) = (tmp_path / "npu" / "npu_dump").iterdir()
    inputs = ",".join(str(folder / "inputs" / f"{k}.npy") for k in range(2))
    again = subprocess.run([sys.executable, str(ROOT / "openclip_precision.py"), *map(str, common), "--output-dir",
                            str(tmp_path / "offline"), "--npu-dump", str(folder / "dump"), "--dump-inputs", inputs],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert list(csv.DictReader(open(tmp_path / "offline" / "node_errors_vision.csv"))) == rows
    wrong = subprocess.run([sys.executable, str(ROOT / "openclip_precision.py"), *map(str, common), "--output-dir",
                            str(tmp_path / "x"), "--npu-dump", str(folder / "dump")], capture_output=True, text=True)
    assert wrong.returncode != 0 and "--npu-dump needs --dump-inputs" in wrong.stderr.strip().splitlines()[-1]


def test_infer_dump_flag_writes_the_dump_ais_bench_writes(tiny_onnx, prep_dir, tmp_path):
    """openclip_infer.py --dump 1, in this process and through ais_bench: OUTPUT/acl.json as ais_bench writes
    it, and a dump under OUTPUT/dump that the kit reads as exactly two executions (one per batch, no warm-up)
    of every output it holds — fused ops matched by their original op, thread slices counted once."""
    import json

    import onnx

    env = _fakes_env()
    subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), "--onnx-prefix", str(tiny_onnx), "--towers",
                    "text", "--batch-sizes", "2", "--output-dir", str(tmp_path / "om")], check=True,
                   capture_output=True, env=env)
    om = next((tmp_path / "om").glob("*_text_bs2.om"))
    texts = tmp_path / "texts"
    texts.mkdir()
    for path in sorted((prep_dir / "texts").glob("*.npy"))[:4]:  # two executions of batch 2
        (texts / path.name).write_bytes(path.read_bytes())
    graph = onnx.load(f"{tiny_onnx}_text.onnx").graph
    for extra in ([], ["--via-ais-bench"]):
        out = tmp_path / ("via" if extra else "kit")
        result = subprocess.run([sys.executable, str(ROOT / "openclip_infer.py"), "--model", str(om), "--input",
                                 str(texts), "--output", str(out), "--output_dirname", "text", "--dump", "1", "--warmup_count", "0", *extra],
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        config = json.loads((out / "acl.json").read_text())["dump"]
        assert config == {"dump_list": [{"model_name": om.stem}], "dump_mode": "all", "dump_path": str(out / "dump")}
        records = [read_dump_file(path) for path in dump_files(out / "dump")]
        # what this dump exercises: device formats, FFTS+ thread slices, fused ops
        assert {tensor.format for record in records for tensor in record.outputs} >= {FRACTAL_NZ}
        assert any(record.name.thread_id is not None for record in records)
        assert any(tensor.original_name and tensor.original_name != record.op_name
                   for record in records for tensor in record.outputs)
        found, unmatched = outputs_by_node(records, graph)
        assert unmatched == [] and found and {len(tensors) for tensors in found.values()} == {2}
    refused = subprocess.run([sys.executable, str(ROOT / "openclip_infer.py"), "--model", str(om), "--dump", "1"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--dump needs --output" in refused.stderr

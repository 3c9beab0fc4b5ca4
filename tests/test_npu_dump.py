"""The NPU operator-dump reader: files encoded by the real protobuf library read back field for field,
device formats brought back to the graph's layout, bad files refused in one line, and locate on the
stand-in OM's dump finding the planted overflow where the fp16 simulation finds it."""

import csv
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend.files import KitError
from openclip_ascend.npu_dump import FRACTAL_NZ, NC1HWC0, dump_files, mangled, read_dump_file, to_logical

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"


def dump_data_class():
    """``toolkit.dumpdata.DumpData`` built by the protobuf library from the message definitions the
    reader's docstring cites (field numbers and types as in AclDumpMsg.proto)."""
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
    message("DumpData", (1, "version", s, None, False), (2, "dump_time", u64, None, False),
            (3, "output", m, ns + "OpOutput", True), (4, "input", m, ns + "OpInput", True),
            (6, "op_name", s, None, False))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName("toolkit.dumpdata.DumpData")
    try:
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:  # protobuf < 4.21
        from google.protobuf.message_factory import MessageFactory

        return MessageFactory(pool).GetPrototype(descriptor)
    return GetMessageClass(descriptor)


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


def test_device_formats_come_back_to_the_graph_layout():
    rng = np.random.default_rng(0)
    # NC1HWC0: channels split into C1 groups of C0 = 16, padded
    nchw = rng.standard_normal((2, 20, 3, 5)).astype(np.float32)
    padded = np.concatenate([nchw, np.zeros((2, 12, 3, 5), np.float32)], axis=1)
    device = padded.reshape(2, 2, 16, 3, 5).transpose(0, 1, 3, 4, 2)
    assert np.array_equal(to_logical(device.ravel(), NC1HWC0, device.shape, nchw.shape), nchw)
    # FRACTAL_NZ: (…, M, N) in 16 × 16 fractals, column blocks outermost, padded
    nd = rng.standard_normal((3, 20, 40)).astype(np.float32)
    padded = np.zeros((3, 32, 48), np.float32)
    padded[:, :20, :40] = nd
    device = padded.reshape(3, 2, 16, 3, 16).transpose(0, 3, 1, 2, 4)  # (batch, N1, M1, M0, N0)
    assert np.array_equal(to_logical(device.ravel(), FRACTAL_NZ, device.shape, nd.shape), nd)
    with pytest.raises(KitError, match="device format FRACTAL_Z .* is not converted"):
        to_logical(np.zeros(16, np.float32), 4, [1, 1, 16, 1], [16])


def _fakes_env():
    return {**os.environ, "PATH": f"{FAKES / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}", "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests/data/npu_smi/910B4.txt")}


def test_locate_on_the_npu_dump_finds_the_planted_overflow(planted_weights, prep_dir, tmp_path):
    """The planted model compiled to an fp16 OM (stand-in atc) and run with the dump on: the first jump is
    the planted LayerNorm, as in the simulation; the same dump read again offline gives the same table."""
    from openclip_ascend.models import TINY_MODEL
    from openclip_ascend.precision import export_for_precision

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
    it and one readable dump file per op and execution under OUTPUT/dump."""
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
    ops = sum(1 for node in onnx.load(f"{tiny_onnx}_text.onnx").graph.node if node.op_type != "Constant")
    for extra in ([], ["--via-ais-bench"]):
        out = tmp_path / ("via" if extra else "kit")
        result = subprocess.run([sys.executable, str(ROOT / "openclip_infer.py"), "--model", str(om), "--input",
                                 str(texts), "--output", str(out), "--output_dirname", "text", "--dump", "1", "--warmup_count", "0", *extra],
                                capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        config = json.loads((out / "acl.json").read_text())["dump"]
        assert config == {"dump_list": [{"model_name": om.stem}], "dump_mode": "all", "dump_path": str(out / "dump")}
        files = dump_files(out / "dump")
        assert len(files) == 2 * ops  # every op, each execution (no warm-up run: it would be dumped too)
        record = read_dump_file(files[0])
        assert record.outputs and record.outputs[0].array().size > 0
    refused = subprocess.run([sys.executable, str(ROOT / "openclip_infer.py"), "--model", str(om), "--dump", "1"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--dump needs --output" in refused.stderr

"""msprof's output as the kit reads it: every part of one collection (slices, per-iteration files, the
layouts of several CANN versions) combined from CSVs with known numbers, a collection without op_statistic
named in one line, the flags the op tables need passed explicitly, and profile_om on each layout the
msprof stand-in writes."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_ascend.ascend.profile import ai_cpu_ops, msprof_command, op_shares, profile_om, read_table, summary_parts
from openclip_ascend.files import KitError

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
STATISTIC = ["Device_id", "OP Type", "Core Type", "Count", "Total Time(us)", "Min Time(us)", "Avg Time(us)",
             "Max Time(us)", "Ratio(%)"]
SUMMARY = ["Device_id", "Model ID", "Task ID", "Stream ID", "Op Name", "OP Type", "Task Type", "Task Duration(us)"]
# two parts of one collection: (OP Type, Core Type, Count, Total, Min, Max); Avg and Ratio are each part's own
PART_STATISTICS = [[("MatMul", "AI_CORE", 3, 60.0, 10.0, 30.0), ("Add", "AI_VECTOR_CORE", 2, 4.0, 1.5, 2.5)],
                   [("MatMul", "AI_CORE", 1, 12.5, 12.5, 12.5), ("ArgMax", "AI_CPU", 1, 30.0, 30.0, 30.0),
                    ("Add", "AI_VECTOR_CORE", 2, 5.0, 0.5, 4.5)]]
PART_SUMMARIES = [[("m1", "MatMul", "AI_CORE", 20.0), ("a1", "Add", "AI_VECTOR_CORE", 2.0)],
                  [("top1", "ArgMax", "AI_CPU", 30.0), ("m1", "MatMul", "AI_CORE", 12.5)]]


def _write(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _statistic_rows(part):
    grand = sum(row[3] for row in part)
    return [[0, op, core, count, total, low, total / count, high, 100 * total / grand]
            for op, core, count, total, low, high in part]


def _summary_rows(part):
    return [[0, 1, index, 2, name, op, task, duration] for index, (name, op, task, duration) in enumerate(part)]


# where each layout puts the two parts: CANN 8 slices, CANN 7.0.RC1 one file per iteration
LAYOUTS = {"8.0 slices": ("mindstudio_profiler_output", "{table}_slice_{n}_20240102030405.csv"),
           "7.0.RC1 iterations": ("device_0/summary", "{table}_0_1_{n}_20240102030405.csv")}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_part_of_a_collection_is_combined(tmp_path, layout):
    folder, name = LAYOUTS[layout]
    collection = tmp_path / "PROF_000001_20240102030405123_ABCDEFGH"
    for n, (statistic, summary) in enumerate(zip(PART_STATISTICS, PART_SUMMARIES), start=1):
        _write(collection / folder / name.format(table="op_statistic", n=n), STATISTIC, _statistic_rows(statistic))
        _write(collection / folder / name.format(table="op_summary", n=n), SUMMARY, _summary_rows(summary))
    if folder == "mindstudio_profiler_output":  # a per-device copy beside the merged output is not read again
        _write(collection / "device_0/summary/op_statistic_0_1_20240102030405.csv", STATISTIC,
               _statistic_rows(PART_STATISTICS[0]))
    log = tmp_path / "msprof.log"
    assert len(summary_parts(collection, "op_statistic")) == 2

    ops = {row["op_type"]: row for row in op_shares(read_table([collection], "op_statistic", log))}
    grand = 60.0 + 4.0 + 12.5 + 30.0 + 5.0
    assert list(ops) == ["MatMul", "ArgMax", "Add"]  # by total time
    assert (ops["MatMul"]["count"], ops["MatMul"]["total_us"], ops["MatMul"]["min_us"], ops["MatMul"]["max_us"]) == \
        (4, 72.5, 10.0, 30.0)
    assert (ops["Add"]["count"], ops["Add"]["total_us"], ops["Add"]["min_us"], ops["Add"]["max_us"]) == \
        (4, 9.0, 0.5, 4.5)
    assert ops["MatMul"]["avg_us"] == pytest.approx(72.5 / 4, rel=1e-12)
    assert ops["Add"]["avg_us"] == pytest.approx(9.0 / 4, rel=1e-12)
    assert ops["ArgMax"]["core_type"] == "AI_CPU" and ops["ArgMax"]["count"] == 1
    for op, total in (("MatMul", 72.5), ("ArgMax", 30.0), ("Add", 9.0)):
        assert ops[op]["share"] == pytest.approx(total / grand, rel=1e-12)
    summary = read_table([collection], "op_summary", log)
    assert [row["Op Name"] for row in summary] == ["m1", "a1", "top1", "m1"]  # concatenated in part order
    assert ai_cpu_ops(summary) == ["top1"]


def test_a_collection_without_op_statistic_is_named_in_one_line(tmp_path):
    collection = tmp_path / "PROF_000001_20240102030405123_ABCDEFGH"
    _write(collection / "mindstudio_profiler_output" / "op_summary_20240102030405.csv", SUMMARY,
           _summary_rows(PART_SUMMARIES[0]))
    with pytest.raises(KitError) as error:
        read_table([collection], "op_statistic", tmp_path / "msprof.log")
    message = str(error.value)
    assert "\n" not in message and str(collection) in message and "no op_statistic_*.csv" in message
    assert "--task-time" in message


def test_msprof_is_told_what_the_op_tables_need(tmp_path):
    command = msprof_command(tmp_path, "m_bs8.om", 8, 5)
    assert "--task-time=on" in command and "--aicpu=on" in command  # ais_bench's own wrapper passes both


def _om(tiny_onnx, tmp_path, env):
    subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), "--onnx-prefix", str(tiny_onnx), "--towers",
                    "text", "--batch-sizes", "2", "--output-dir", str(tmp_path / "om")], check=True,
                   capture_output=True, env=env)
    return next((tmp_path / "om").glob("*_text_bs2.om"))


@pytest.mark.parametrize("stand_in", [{"FAKE_MSPROF_LAYOUT": "8.0", "FAKE_MSPROF_SLICE_ROWS": "50"},
                                      {"FAKE_MSPROF_LAYOUT": "7.0.RC1", "FAKE_MSPROF_TASK_TIME_DEFAULT": "l0"},
                                      {"FAKE_MSPROF_LAYOUT": "6.3.RC2"}])
def test_profile_om_reads_the_whole_collection_of_each_layout(tiny_onnx, tmp_path, monkeypatch, stand_in):
    """profile_om on the stand-in msprof: the combined op statistics count every task op_summary lists (all
    slices / iterations read), even when the stand-in's --task-time default would write no op_statistic."""
    env = {"PATH": f"{FAKES / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}", "FAKE_NPU_SMI_OUTPUT": str(ROOT / "tests/data/npu_smi/910B4.txt"),
           **stand_in}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    om = _om(tiny_onnx, tmp_path, {**os.environ, **env})
    out = tmp_path / "profile"
    (out / "PROF_000001_20000101000000000_OLDRUNXX" / "mindstudio_profiler_output").mkdir(parents=True)
    stale = out / "PROF_000001_20000101000000000_OLDRUNXX" / "mindstudio_profiler_output" / "op_statistic_1.csv"
    _write(stale, STATISTIC, _statistic_rows(PART_STATISTICS[0]))  # an earlier run's collection is not read

    record = profile_om(om, 2, 2, out, fps=100.0, flop=1e9)
    (collection,) = [path for path in out.glob("PROF_*") if "OLDRUN" not in path.name]
    summary_files = list(collection.rglob("op_summary_*.csv"))
    tasks = sum(1 for path in summary_files for _ in csv.DictReader(open(path, encoding="utf-8")))
    assert len(summary_files) > 1 or stand_in["FAKE_MSPROF_LAYOUT"] == "6.3.RC2"  # several parts to combine
    assert sum(row["count"] for row in record["ops"]) == tasks
    assert abs(sum(row["share"] for row in record["ops"]) - 1) < 1e-9
    assert len(record["ai_cpu_ops"]) == 1 and "ArgMax" in record["ai_cpu_ops"][0]
    assert "--task-time=on" in record["command"]

"""Where fp16 breaks and the smallest fp32 keep set: a planted overflow is located and repaired, a
healthy model is left alone, and the keep file goes to atc as PRECISION=keep:FILE."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from openclip_ascend.atc import plan_jobs
from openclip_ascend.files import KitError
from openclip_ascend.models import TINY_MODEL
from openclip_ascend.precision import export_for_precision, prepare, run_search

ROOT = Path(__file__).resolve().parents[1]
PLANTED = "resblocks.0"  # scopes read transformer/resblocks.0/… (or resblocks.0/… where the pooled rewrite runs the blocks)


def precision_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "openclip_precision.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_planted_overflow_is_located_to_its_block(planted_weights, prep_dir, tmp_path):
    result = precision_cli("locate", "--model-name", TINY_MODEL, "--pretrained", planted_weights, "--prep", prep_dir,
                           "--tower", "vision", "--output-dir", tmp_path, "--samples", 4)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "node_errors_vision.csv")))
    first = next(row for row in rows if row["jump"] == "1")
    assert first["scope"].endswith(f"{PLANTED}/ln_2") and first["overflow"] == "1"
    assert all(row["overflow"] == "0" for row in rows[:rows.index(first)])  # nothing broke before it
    summary = (tmp_path / "node_errors_vision.md").read_text()
    assert f"{PLANTED}/ln_2/" in summary.split("First jump: ")[1].splitlines()[0] and "overflow" in summary
    assert (tmp_path / "node_errors_vision.png").read_bytes()[:4] == b"\x89PNG"


def test_planted_overflow_is_repaired_by_the_smallest_keep_set(planted_weights, prep_dir, tmp_path):
    result = precision_cli("search", "--model-name", TINY_MODEL, "--pretrained", planted_weights, "--prep", prep_dir,
                           "--tower", "vision", "--output-dir", tmp_path, "--samples", 4)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "precision_vision.json").read_text())
    assert record["found"] and record["keep"]
    assert all(PLANTED in scope for scope in record["keep_scopes"])  # only the planted block
    fp32, fp16, kept = record["fp32"], record["fp16"], record["kept"]
    assert fp16["image_retrieval_recall@5"] < fp32["image_retrieval_recall@5"] - 0.1  # plain fp16 broke it
    for key in ("image_retrieval_recall@5", "text_retrieval_recall@5"):
        assert abs(kept[key] - fp32[key]) <= 0.002
    assert record["kept_min_cosine"] >= 0.99
    keep_file = (tmp_path / "keep_dtype_vision.cfg").read_text().split()
    assert keep_file == record["keep"]
    assert set(record["bought"]) == set(record["keep_scopes"])
    assert "keep fp32:" in result.stdout

    # the keep file as an atc preset: the names reach --keep_dtype, and only graph nodes are accepted
    prefix = tmp_path / "models" / "openclip_ascend_tiny"
    (job,) = plan_jobs(prefix, ["vision"], [4], "Ascend910B4", tmp_path / "om",
                       precision_mode=f"keep:{tmp_path / 'keep_dtype_vision.cfg'}")
    assert "--precision_mode=force_fp16" in job.command and job.keep_dtype == record["keep"]
    (tmp_path / "empty.cfg").write_text("")  # nothing to keep: plain fp16, no --keep_dtype naming an unwritten file
    (job,) = plan_jobs(prefix, ["vision"], [4], "Ascend910B4", tmp_path / "om", precision_mode=f"keep:{tmp_path / 'empty.cfg'}")
    assert not any(arg.startswith(("--keep_dtype", "--precision_mode")) for arg in job.command) and job.keep_dtype == []
    (tmp_path / "bad.cfg").write_text("/no/such/node\n")
    with pytest.raises(KitError, match="nodes not in this graph"):
        plan_jobs(prefix, ["vision"], [4], "Ascend910B4", tmp_path / "om", precision_mode=f"keep:{tmp_path / 'bad.cfg'}")


def test_a_healthy_model_is_not_repaired(prep_dir, tmp_path, capsys):
    job = prepare(export_for_precision(TINY_MODEL, None, tmp_path), prep_dir, "text", tmp_path)
    record = run_search(job, samples=4, recall_bound=0.002, min_cosine=0.99)
    assert record["found"] and record["keep"] == [] and record["fp16"] == record["fp32"]
    assert record["fp16_min_cosine"] > 0.999
    assert "nothing to keep in fp32" in capsys.readouterr().out
    assert (tmp_path / "keep_dtype_text.cfg").read_text() == ""


def test_310p_keeps_no_matrix_product(planted_weights, prep_dir, tmp_path):
    """On 310P the search may keep only vector ops; a keep file naming a MatMul is refused for 310P."""
    job = prepare(export_for_precision(TINY_MODEL, str(planted_weights), tmp_path), prep_dir, "vision", tmp_path)
    record = run_search(job, samples=2, recall_bound=0.002, min_cosine=0.99, soc_version="Ascend310P3")
    ops = {row["node"]: row["op_type"] for row in csv.DictReader(open(tmp_path / "node_errors_vision.csv"))}
    assert record["vector_ops_only"] and all(ops[name] not in ("MatMul", "Gemm", "Conv") for name in record["keep"])
    (tmp_path / "matmul.cfg").write_text(next(name for name, op in ops.items() if op == "MatMul") + "\n")
    with pytest.raises(KitError, match="310P can only run on the AI CPU"):
        plan_jobs(tmp_path / "models" / "openclip_ascend_tiny", ["vision"], [4], "Ascend310P3", tmp_path / "om",
                  precision_mode=f"keep:{tmp_path / 'matmul.cfg'}")

"""The Ascend path without an NPU: recorded npu-smi tables and stand-in atc / ais_bench (tests/fakes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from openclip_ascend.ascend import aisbench
from openclip_ascend.ascend.atc import ATC_PRECISION_MODES, plan_jobs, run_jobs
from openclip_ascend.ascend.npu_smi import detect_soc_version, parse_npu_smi, soc_version_of
from openclip_ascend.files import KitError
from openclip_ascend.model.export import onnx_path
from openclip_ascend.run.runner import infer, infer_devices
from openclip_ascend.run.sessions import AscendSession, OnnxRuntimeSession, open_session

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fakes"
NPU_SMI = HERE / "data" / "npu_smi"
ROOT = HERE.parent


def forget_ais_bench(monkeypatch):
    """Drop imported ais_bench and aclruntime modules so the next import finds the packages now on the path."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("ais_bench", "aclruntime")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture()
def tools(monkeypatch, tmp_path):
    """Stand-ins on PATH and PYTHONPATH; returns a reader of their recorded calls."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", f"{FAKES}{os.pathsep}{ROOT}")
    monkeypatch.setenv("FAKE_TOOL_LOG", str(log))
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "910B4.txt"))
    monkeypatch.syspath_prepend(str(FAKES))
    forget_ais_bench(monkeypatch)

    def calls(tool=None):
        if not log.exists():
            return []
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return [e for e in entries if tool is None or e["tool"] == tool]

    return calls


# --- chip detection ---------------------------------------------------------------------------

@pytest.mark.parametrize("table,soc,count", [("310P3_two_cards.txt", "Ascend310P3", 2), ("910B4.txt", "Ascend910B4", 1),
                                             ("910B3_alarm_with_process.txt", "Ascend910B3", 2)])
def test_parse_recorded_npu_smi(table, soc, count):
    chips = parse_npu_smi((NPU_SMI / table).read_text())
    assert len(chips) == count and soc_version_of(chips) == soc
    assert [chip.npu_id for chip in chips] == list(range(count))


def test_alarm_health_is_reported(tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "910B3_alarm_with_process.txt"))
    soc, chips, warnings = detect_soc_version()
    assert soc == "Ascend910B3" and chips[0].health == "Alarm"
    assert warnings == ["NPU 0 (910B3) reports Health Alarm"]
    assert tools("npu-smi") == [{"tool": "npu-smi", "argv": ["info"]}]


def test_a3_name_is_not_guessed(tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "A3_ascend910.txt"))
    with pytest.raises(KitError, match="not a soc version.*--soc-version"):
        detect_soc_version()


def test_override_wins_without_calling_npu_smi(tools):
    assert detect_soc_version("Ascend310P3")[0] == "Ascend310P3"
    assert tools("npu-smi") == []


def test_no_npu_smi_asks_for_soc_version(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KitError, match="npu-smi not found.*--soc-version"):
        detect_soc_version()


def test_npu_smi_failure_is_named(tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_EXIT", "3")
    with pytest.raises(KitError, match="npu-smi info failed \\(exit 3: dcmi"):
        detect_soc_version()


# --- atc --------------------------------------------------------------------------------------

def convert(*flags, env=None):
    return subprocess.run([sys.executable, str(ROOT / "convert" / "onnx2om.py"), *flags], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_dry_run_prints_the_reference_commands(tools, tiny_onnx):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1,64", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines == [
        f"atc --framework=5 --model={tiny_onnx}_vision.onnx --output={tiny_onnx}_vision_bs1 --input_format=NCHW "
        "--input_shape=image:1,3,224,224 --log=error --soc_version=Ascend910B4",
        f"atc --framework=5 --model={tiny_onnx}_vision.onnx --output={tiny_onnx}_vision_bs64 --input_format=NCHW "
        "--input_shape=image:64,3,224,224 --log=error --soc_version=Ascend910B4",
        f"atc --framework=5 --model={tiny_onnx}_text.onnx --output={tiny_onnx}_text_bs1 --input_format=ND "
        "--input_shape=text:1,77 --log=error --soc_version=Ascend910B4",
        f"atc --framework=5 --model={tiny_onnx}_text.onnx --output={tiny_onnx}_text_bs64 --input_format=ND "
        "--input_shape=text:64,77 --log=error --soc_version=Ascend910B4",
    ]
    assert tools("atc") == []


def test_compile_skip_force_and_suffix(tools, tiny_onnx, tmp_path):
    out = tmp_path / "oms"
    flags = ["--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1,4", "--output-dir", str(out), "--jobs", "2"]
    result = convert(*flags, env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert result.returncode == 0, result.stderr
    produced = sorted(p.name for p in out.glob("*.om"))
    assert produced == [f"tiny_{t}_bs{b}_linux_x86_64.om" for t in ("text", "vision") for b in (1, 4)]
    assert "ATC run success" in (out / "tiny_vision_bs4.atc.log").read_text()
    assert len(tools("atc")) == 4
    again = convert(*flags, env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert again.returncode == 0 and again.stdout.count("| skipped |") == 4 and len(tools("atc")) == 4
    forced = convert(*flags, "--force", env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert forced.returncode == 0 and forced.stdout.count("| ok |") == 4 and len(tools("atc")) == 8
    changed = convert(*flags, "--atc-args=--op_select_implmode=high_performance", env={"FAKE_ATC_SUFFIX": "_linux_x86_64"})
    assert changed.stdout.count("| ok |") == 4  # another command: not up to date
    assert tools("atc")[-1]["argv"][-1] == "--op_select_implmode=high_performance"


def test_bs1_om_is_not_mistaken_for_bs16(tools, tiny_onnx, tmp_path):
    jobs = plan_jobs(tiny_onnx, ["text"], [16], "Ascend910B4", tmp_path)
    (tmp_path / "tiny_text_bs1.om").write_text("{}")
    (tmp_path / "tiny_text_bs1.atc.json").write_text(json.dumps({"command": jobs[0].command}))
    assert run_jobs(jobs)[0].om.name == "tiny_text_bs16.om"


def test_one_failing_batch_size_does_not_stop_the_others(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1,8", "--output-dir", str(tmp_path),
                     env={"FAKE_ATC_FAIL_SHAPE": "image:8,", "FAKE_ATC_FAIL_CODE": "EZ3003"})
    assert result.returncode == 1
    rows = [line for line in result.stdout.splitlines() if line.startswith("| vision | 8 |")]
    assert rows and "| failed |" in rows[0] and "EZ3003" in rows[0]
    assert sorted(p.name for p in tmp_path.glob("*.om")) == ["tiny_text_bs1.om", "tiny_text_bs8.om", "tiny_vision_bs1.om"]
    assert "1 of 4 atc compiles failed" in result.stderr and "tiny_vision_bs8.atc.log" in result.stderr


def test_dynamic_batch_and_precision(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--towers", "text", "--batch-sizes", "1,4,8", "--dynamic-batch",
                     "--precision-mode", "must_keep_origin_dtype", "--soc-version", "Ascend910B3",
                     "--output-dir", str(tmp_path), "--tag", "fp32")
    assert result.returncode == 0, result.stderr
    (call,) = tools("atc")
    assert "--input_shape=text:-1,77" in call["argv"] and "--dynamic_batch_size=1,4,8" in call["argv"]
    assert "--precision_mode=must_keep_origin_dtype" in call["argv"] and "--soc_version=Ascend910B3" in call["argv"]
    assert (tmp_path / "tiny_text_dynbs_fp32.om").is_file() and tools("npu-smi") == []


def test_one_gear_is_refused_before_atc(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "8", "--dynamic-batch", "--output-dir",
                     str(tmp_path))
    assert result.returncode == 2 and tools("atc") == []
    assert "atc needs 2 to 100 distinct gears (E10035)" in result.stderr and result.stderr.count("\n") == 1
    (job,) = plan_jobs(tiny_onnx, ["text"], [1, 8], "Ascend910B4", tmp_path, dynamic_batch=True)
    job.command[-1] = "--dynamic_batch_size=8"  # what the kit no longer writes: the stand-in refuses it as atc does
    assert run_jobs([job])[0].error.startswith("E10035")


def test_unknown_soc_version_is_atcs_refusal_in_the_table(tools, tiny_onnx, tmp_path):
    """--soc-version goes to atc unchecked; atc refuses one without a platform config. EXPORT: a path word
    that reads like an E-code, in the command line the kit writes at the top of each log."""
    out = tmp_path / "EXPORT"
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1", "--soc-version", "Ascend910B9",
                     "--output-dir", str(out))
    assert result.returncode == 1 and len(tools("atc")) == 2
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| vision | 1 |", "| text | 1 |"))]
    assert len(rows) == 2 and all("| failed |" in row for row in rows)
    assert all("| EE1011: rtSetSocVersion failed. Value Ascend910B9 for parameter ver is invalid." in row for row in rows)
    # the chips the reference names, A3's included, have platform configs
    jobs = [job for soc in ("Ascend910_9391", "Ascend310B4", "Ascend910B2C")
            for job in plan_jobs(tiny_onnx, ["text"], [1], soc, out / soc)]
    assert [job.status for job in run_jobs(jobs, parallel=2)] == ["ok"] * 3


@pytest.mark.parametrize("atc_args,code,says", [
    ("--op_select_implmode=high_perf", "E10001", "Value high_perf for parameter --op_select_implmode is invalid."),
    ("--optypelist_for_implmode=Gelu", "E10001", "--op_select_implmode and --optypelist_for_implmode must be set"),
    ("--log=verbose", "E10010", "Value verbose for parameter --log is invalid."),
    # another input name: the graph's own input keeps its symbolic batch
    ("--input_shape=tokens:1,77", "E10001", "Value NULL for parameter --input_shape is invalid."),
    ("'--input_shape=text:1,77;tokens:1,77'", "E10016", "Op name tokens specified in --input_shape is not found"),
    ("--op_select_implmode=high_precision --optypelist_for_implmode=Gelu --log=info", None, None),
])
def test_atc_args_atc_refuses_come_back_as_failed_jobs(tools, tiny_onnx, tmp_path, atc_args, code, says):
    (job,) = run_jobs(plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, atc_args=atc_args))
    if code is None:
        assert job.status == "ok" and job.om is not None
    else:
        assert job.status == "failed" and job.om is None
        assert job.error.startswith(f"{code}: ") and says in job.error


def test_precision_modes_atc_refuses_are_refused_before_atc(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "1", "--precision-mode", "vision=mixed,text=fp17",
                     "--output-dir", str(tmp_path))
    assert result.returncode == 2 and tools("atc") == [] and result.stderr.count("\n") == 1
    assert "--precision-mode vision=mixed,text=fp17: 'fp17' is neither a preset" in result.stderr
    with pytest.raises(KitError, match="--precision-mode-v2 fp17: atc accepts fp16, origin"):
        plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, precision_mode_v2="fp17")
    # every atc mode the kit lets through, atc compiles
    jobs = [job for mode in ATC_PRECISION_MODES
            for job in plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path / mode, precision_mode=mode)]
    assert {job.status for job in run_jobs(jobs, parallel=2)} == {"ok"}
    jobs[0].command[-1] = "--precision_mode=fp17"  # what the kit refuses: atc's refusal, had it got there
    assert run_jobs([jobs[0]], force=True)[0].error.startswith("E10001: Value fp17 for parameter --precision_mode")


def commented(config):
    """An AIPP config as people write them: CRLF, a comment line, a comment after every value."""
    lines = [line + (f"  # {line.split(':')[0].strip()}: was set here" if ":" in line else "")
             for line in config.splitlines()]
    return "\r\n".join(["# AIPP for CLIP, see ATC's docs: insert_op_conf"] + lines) + "\r\n"


def test_aipp_configs_as_atc_reads_them(tools, tiny_onnx, prep_dir, tmp_path):
    """Through the aipp preset: a commented config compiles and the OM normalises with the values the kit
    reads from it; a line that does not parse (a full-width colon) and an AIPP block on the ND text input
    fail as atc fails."""
    from openclip_ascend.ascend.aipp import aipp_config, block_for_input, emulate, parse_aipp_config, to_uint8
    from openclip_ascend.ascend.atc_presets import parse_variants, variant_jobs
    from openclip_ascend.data.dataset import load_prepared

    manifest, arrays, _ = load_prepared(prep_dir, images=2)
    pre = manifest.preprocess
    text = commented(aipp_config(pre["mean"], pre["std"], *pre["size"]))
    good, full_width = tmp_path / "aipp.cfg", tmp_path / "aipp_fw.cfg"
    good.write_bytes(text.encode())
    full_width.write_bytes(text.replace("min_chn_1 :", "min_chn_1 ：").encode())
    (aipp,) = parse_variants("aipp")
    # compiled fp32, so that AIPP's own fp16 arithmetic is the only rounding: the OM and the kit's emulation agree
    (job,) = run_jobs(variant_jobs(tiny_onnx, aipp, ["vision"], [2], "Ascend910B4", tmp_path, precision_mode="fp32",
                                   aipp_config=good))
    assert job.status == "ok", job.error
    session = open_session("auto", str(job.om))
    u8 = to_uint8(arrays["vision"], pre["mean"], pre["std"])
    assert session.input_shape == (2, *pre["size"], 3) and session.input_dtype == np.uint8
    expected = OnnxRuntimeSession(onnx_path(tiny_onnx, "vision")).run(
        emulate(u8, block_for_input(parse_aipp_config(text, "aipp.cfg"))))
    assert np.allclose(session.run(u8), expected, atol=1e-5)
    session.close()
    (job,) = run_jobs(variant_jobs(tiny_onnx, aipp, ["vision"], [2], "Ascend910B4", tmp_path / "fw",
                                   aipp_config=full_width))
    assert job.status == "failed" and job.error == f"E13005: Failed to parse file {full_width}."
    vision, text_job = run_jobs(plan_jobs(tiny_onnx, ["vision", "text"], [2], "Ascend910B4", tmp_path / "both",
                                          atc_args=f"--insert_op_conf={good}"))
    assert vision.status == "ok" and text_job.status == "failed"
    assert text_job.error.startswith("E70002: In op[text_0_aipp], the format of input[images] should be one of "
                                     "[NCHW, NHWC or NC1HWC0_C04], but actually is [ND].")


def test_310p_has_no_fp32_preset_and_keeps_only_vector_ops(tools, tiny_onnx, tmp_path):
    for mode in ("fp32", "must_keep_origin_dtype"):
        with pytest.raises(KitError, match="310P has no fp32 Cube path.*use mixed"):
            plan_jobs(tiny_onnx, ["vision"], [4], "Ascend310P3", tmp_path, precision_mode=mode)
    onnx_ops = {node.name: node.op_type for node in __import__("onnx").load(str(onnx_path(tiny_onnx, "vision"))).graph.node}
    (on_310p,) = plan_jobs(tiny_onnx, ["vision"], [4], "Ascend310P3", tmp_path, precision_mode="mixed")
    (on_910b,) = plan_jobs(tiny_onnx, ["vision"], [4], "Ascend910B4", tmp_path, precision_mode="mixed")
    cube = {"MatMul", "Gemm", "Conv"}
    assert not {onnx_ops[name] for name in on_310p.keep_dtype} & cube
    assert {onnx_ops[name] for name in on_910b.keep_dtype} & cube  # the head's projection, kept on 910B
    assert {"LayerNormalization", "Softmax"} & {onnx_ops[name] for name in on_310p.keep_dtype} or \
        any("/ln_" in name for name in on_310p.keep_dtype)


def test_keep_dtype_names_must_be_nodes_of_the_graph(tools, tiny_onnx, tmp_path, monkeypatch):
    (job,) = plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, precision_mode="mixed")
    job.keep_dtype.append("/transformer/resblocks.99/ln_1/ReduceMean")
    with pytest.raises(KitError, match=r"names 1 nodes not in this graph \(first: /transformer/resblocks\.99"):
        run_jobs([job])
    monkeypatch.setenv("FAKE_ATC_OLD", "1")  # what CANN 6-7.0 does with it: fail the whole compile
    job.keep_dtype.pop()
    assert run_jobs([job])[0].status == "ok"


def test_external_data_must_be_beside_the_graph(tools, tiny_model, tmp_path, monkeypatch):
    import openclip_ascend.model.export as export

    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    export.export_model(tiny_model, tmp_path / "big", towers=("text",), check=False)
    assert plan_jobs(tmp_path / "big", ["text"], [1], "Ascend910B4", tmp_path)
    export.external_data_path(onnx_path(tmp_path / "big", "text")).unlink()
    with pytest.raises(KitError, match=r"big_text\.onnx\.data: missing beside .*big_text\.onnx"):
        plan_jobs(tmp_path / "big", ["text"], [1], "Ascend910B4", tmp_path)


@pytest.mark.parametrize("opset", [10, 18, 19])
def test_opsets_atc_cannot_parse_are_refused(tiny_model, tmp_path, opset):
    from openclip_ascend.model.export import export_model

    with pytest.raises(KitError, match=rf"--opset {opset}: choose 11–17"):
        export_model(tiny_model, tmp_path / "m", opset=opset)


def test_precision_presets_per_tower(tools, tiny_onnx, tmp_path):
    result = convert("--onnx-prefix", str(tiny_onnx), "--batch-sizes", "4", "--precision-mode", "vision=mixed,text=fp32",
                     "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    calls = {("image:" in " ".join(c["argv"])): c["argv"] for c in tools("atc")}
    vision, text = calls[True], calls[False]
    keep = tmp_path / "tiny_vision_bs4.keep_dtype.cfg"
    assert "--precision_mode=force_fp16" in vision and f"--keep_dtype={keep}" in vision
    assert "--precision_mode=must_keep_origin_dtype" in text and not any(a.startswith("--keep_dtype") for a in text)
    nodes = keep.read_text().split()
    assert any("/ln_1/" in n for n in nodes) and any("/ln_post/" in n for n in nodes)
    assert any(n.endswith("Softmax") for n in nodes) and nodes[-1].endswith("/Div")  # the L2 normalisation
    assert not any("/mlp/" in n for n in nodes)  # the matrix products stay fp16


def test_raw_atc_precision_mode_passes_through(tiny_onnx, tmp_path):
    (job,) = plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, precision_mode="allow_mix_precision")
    assert job.command[-1] == "--precision_mode=allow_mix_precision"
    with pytest.raises(KitError, match="TOWER=MODE"):
        plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path, precision_mode="audio=fp16")


def test_both_precision_flags_are_refused(tiny_onnx):
    with pytest.raises(KitError, match="cannot be combined"):
        plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", precision_mode="force_fp32", precision_mode_v2="origin")


def test_missing_atc_says_to_source_cann(tiny_onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KitError, match="set_env.sh"):
        run_jobs(plan_jobs(tiny_onnx, ["text"], [1], "Ascend910B4", tmp_path))


# --- the Ascend backend -------------------------------------------------------------------------

@pytest.fixture()
def oms(tools, tiny_onnx, tmp_path):
    """bs4 OMs of both towers and a dynamic-batch text OM, compiled by the stand-in atc."""
    out = tmp_path / "oms"
    jobs = plan_jobs(tiny_onnx, ["vision", "text"], [4], "Ascend910B4", out)
    jobs += plan_jobs(tiny_onnx, ["text"], [1, 4, 8], "Ascend910B4", out, dynamic_batch=True)
    assert all(job.status == "ok" for job in run_jobs(jobs))
    return {f"{job.tower}_{'dyn' if ',' in job.batch else job.batch}": job.om for job in jobs}


@pytest.fixture(params=["tools-2023", "ait"])
def front_end(request, tools, monkeypatch):
    """The kit's InferSession code against both generations of ais_bench's front end and aclruntime: the 2023
    one (execute times as floats, a gear kept across static runs) and ait's (``(start, end)`` pairs, the gear
    reset before every static run)."""
    monkeypatch.setenv("FAKE_AIS_BENCH_GENERATION", request.param)
    forget_ais_bench(monkeypatch)
    return request.param


def run_towers(models, prep_dir, out):
    """Both towers of ``models`` ({tower: model path}) over the prepared set into ``out/{tower}``, batch 4."""
    for tower, folder in (("vision", "images"), ("text", "texts")):
        session = open_session("auto", str(models[tower]))
        try:
            summary = infer(session, input=str(prep_dir / folder), output=str(out), output_dirname=tower,
                            outfmt="NPY", batchsize=4)
        finally:
            session.close()
    return summary


def test_om_outputs_are_each_files_embedding_at_the_compiled_precision(front_end, oms, tools, tiny_onnx, prep_dir,
                                                                       tmp_path, same_embeddings):
    """10 images and 50 captions at batch 4 through InferSession (the stand-in refuses any feed that is not exactly
    4 samples): each output file holds its own input's embedding — compared file by file with ONNX Runtime fp32 —
    at the precision the OM was compiled for: fp16 (atc's default) visibly rounded yet within fp16's bounds, an
    fp32 OM within fp32's; recall as ONNX Runtime's up to the near-ties of that precision."""
    from conftest import PRECISION_BOUNDS

    onnx = {tower: onnx_path(tiny_onnx, tower) for tower in ("vision", "text")}
    run_towers(onnx, prep_dir, tmp_path / "onnx")
    summary = run_towers({tower: oms[f"{tower}_4"] for tower in onnx}, prep_dir, tmp_path / "om")
    assert summary["NPU_compute_time"]["count"] == 13 and len(list((tmp_path / "om" / "vision").glob("*_0.npy"))) == 10
    assert summary["throughput"] == pytest.approx(4000 / summary["NPU_compute_time"]["mean"])
    fp16 = same_embeddings(tmp_path / "om", tmp_path / "onnx", prep_dir / "manifest.json", "fp16")
    assert all(entry["max_abs_diff"] > PRECISION_BOUNDS["fp32"]["max_abs_diff"] for entry in fp16.values())
    fp32_jobs = run_jobs(plan_jobs(tiny_onnx, list(onnx), [4], "Ascend910B4", tmp_path / "fp32", precision_mode="fp32"))
    run_towers({job.tower: job.om for job in fp32_jobs}, prep_dir, tmp_path / "om32")
    same_embeddings(tmp_path / "om32", tmp_path / "onnx", prep_dir / "manifest.json", "fp32")


@pytest.mark.parametrize("mode", ["allow_fp32_to_bf16", "allow_mix_precision_bf16"])
def test_a_bf16_om_computes_in_bf16(tools, tiny_model, tiny_onnx, tmp_path, mode):
    """bfloat16 keeps 8 significant bits: a bf16 OM's embeddings are visibly off fp32's, yet the same model's
    (ONNX Runtime before 1.17 dropped the Cast pair the stand-in rounds with: bf16 OMs computed fp32 there)."""
    from conftest import PRECISION_BOUNDS

    from openclip_ascend.agreement import compare_embeddings
    from openclip_ascend.model.towers import example_inputs

    (job,) = run_jobs(plan_jobs(tiny_onnx, ["text"], [4], "Ascend910B4", tmp_path, precision_mode=mode))
    tokens = example_inputs(tiny_model, "text", 4, seed=3)
    session = AscendSession(job.om)
    try:
        om = session.run(tokens)
    finally:
        session.close()
    agreement = compare_embeddings(OnnxRuntimeSession(onnx_path(tiny_onnx, "text")).run(tokens), om)
    assert agreement["max_abs_diff"] > PRECISION_BOUNDS["fp32"]["max_abs_diff"] and agreement["min_cosine"] > 0.99


def test_the_embedding_check_fails_on_swapped_or_reordered_outputs(tiny_onnx, prep_dir, tmp_path, same_embeddings):
    """Every image embedding stored under its neighbour's name (recall collapses), or one batch's rows in another
    order: the check that judges the NPU path must fail, however far the runs are apart."""
    import shutil

    run_towers({tower: onnx_path(tiny_onnx, tower) for tower in ("vision", "text")}, prep_dir, tmp_path / "onnx")
    for case in ("neighbour", "reordered"):
        shutil.copytree(tmp_path / "onnx", tmp_path / case)
        files = sorted((tmp_path / case / "vision").glob("*_0.npy"))
        arrays = [np.load(path) for path in files]
        order = list(range(1, len(files))) + [0] if case == "neighbour" else [1, 0, 3, 2] + list(range(4, len(files)))
        for path, index in zip(files, order):
            np.save(path, arrays[index])
        with pytest.raises(AssertionError, match="vision .*outside the fp16 bounds"):
            same_embeddings(tmp_path / case, tmp_path / "onnx", prep_dir / "manifest.json", "fp16")


def test_dynamic_batch_gear(front_end, oms, prep_dir, tmp_path, tools):
    session = open_session("auto", str(oms["text_dyn"]), dym_batch=8)
    summary = infer(session, input=str(prep_dir / "texts"), output=str(tmp_path), output_dirname="t", outfmt="NPY")
    session.close()
    assert summary["batchsize"] == 8 and len(list((tmp_path / "t").glob("*_0.npy"))) == 50
    # the real back end answers a bad gear with a bare [ACL: general failure]; the kit checks first
    with pytest.raises(KitError, match=r"a dynamic-batch OM \(its gears are 1,4,8\); --dymBatch 3 is not one of them"):
        open_session("auto", str(oms["text_dyn"]), dym_batch=3)
    with pytest.raises(KitError, match=r"its gears are 1,4,8\); it needs --dymBatch N"):
        open_session("auto", str(oms["text_dyn"]))  # the back end reports -1 as the batch
    om_elsewhere = tmp_path / "copied_dynbs.om"  # no .atc.json beside it: the gears are not known
    om_elsewhere.write_bytes(Path(oms["text_dyn"]).read_bytes())
    with pytest.raises(KitError, match=r"--dymBatch 3: .* refused it \(\[-1\]\[ACL: general failure\]\)"):
        open_session("auto", str(om_elsewhere), dym_batch=3)
    assert len(tools("finalize")) == 4  # every session the kit opened released its device, refused ones too


def test_multi_device_split(oms, prep_dir, tmp_path, capsys):
    summary = infer_devices({"backend": "auto", "model": str(oms["vision_4"])}, [0, 1], input=str(prep_dir / "images"),
                            output=str(tmp_path), output_dirname="md", outfmt="NPY")
    counts = {d: len(list((tmp_path / "md" / f"device{d}").glob("*_0.npy"))) for d in (0, 1)}
    assert counts == {0: 5, 1: 5}
    assert summary["throughput"] == pytest.approx(sum(s["throughput"] for s in summary["devices"].values()))
    _, total = aisbench.parse_throughput(capsys.readouterr().out)
    assert total == pytest.approx(summary["throughput"])


@pytest.mark.parametrize("wording", [0, 1, 2])
def test_pass_through_parses_every_wording(oms, prep_dir, tmp_path, monkeypatch, tools, wording):
    monkeypatch.setenv("FAKE_AIS_BENCH_WORDING", str(wording))
    cmd = aisbench.command(oms["vision_4"], input=str(prep_dir / "images"), output=str(tmp_path),
                           output_dirname="pt", outfmt="NPY")
    assert cmd[1:] == ["-m", "ais_bench", "--model", str(oms["vision_4"]), "--input", str(prep_dir / "images"),
                       "--output", str(tmp_path), "--output_dirname", "pt", "--outfmt", "NPY"]
    result = aisbench.run(cmd, str(tmp_path), "pt")
    assert result["throughput"] == pytest.approx(result["summaries"]["0"]["throughput"])
    # no --batchsize given: the tool takes the model's batch, 4
    assert result["lines"][0]["batchsize"] == 4 and len(list((tmp_path / "pt").glob("*_0.npy"))) == 10
    assert tools("ais_bench")[0]["argv"][:2] == ["--model", str(oms["vision_4"])]


def infer_cli(*flags, env=None):
    return subprocess.run([sys.executable, str(ROOT / "openclip_infer.py"), *map(str, flags)], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})


def test_via_ais_bench_reports_the_models_batch(oms, tmp_path, tools):
    """A batch-4 OM: the kit used to pass --batchsize 1, and the tool then printed a quarter of the truth."""
    result = infer_cli("--model", oms["vision_4"], "--loop", 5, "--via-ais-bench")
    assert result.returncode == 0, result.stderr
    (call,) = tools("ais_bench")
    assert call["argv"] == ["--model", str(oms["vision_4"]), "--batchsize", "4", "--loop", "5"]
    (line,) = aisbench.parse_throughput(result.stdout)[0]
    assert line["batchsize"] == 4 and line["throughput"] == pytest.approx(4000 / line["compute_ms"])


def test_one_folder_per_model_input_as_ais_bench_takes_it(oms, prep_dir, tmp_path, tools):
    """`--input d1,d2` names two model inputs: ais_bench refuses it for a one-input model, and so does the kit's
    runner, in ais_bench's words (it used to run both folders' files as one input)."""
    two = f"{prep_dir / 'images'},{prep_dir / 'images'}"
    refused = "args input dir num:2 not equal to model inputs num:1"
    tool = subprocess.run([sys.executable, "-m", "ais_bench", "--model", str(oms["vision_4"]), "--input", two],
                          capture_output=True, text=True)
    assert tool.returncode != 0 and refused in tool.stdout
    kit = infer_cli("--model", oms["vision_4"], "--input", two, "--output", tmp_path)
    assert kit.returncode == 2 and kit.stderr.startswith(f"error: --input {two}: {refused}")
    assert kit.stderr.count("\n") == 1 and not list(tmp_path.rglob("*_0.bin"))
    files = sorted((prep_dir / "images").glob("*.npy"))[:4]  # files, though, are all one input's, in the order given
    listed = infer_cli("--model", oms["vision_4"], "--input", ",".join(map(str, files)), "--output", tmp_path,
                       "--output_dirname", "listed", "--outfmt", "NPY")
    assert listed.returncode == 0, listed.stderr
    assert sorted(p.name for p in (tmp_path / "listed").glob("*_0.npy")) == sorted(f"{p.stem}_0.npy" for p in files)


def test_length_buckets_need_the_kits_runner(oms, tmp_path, tools):
    """ais_bench takes one model: length buckets are refused before it runs, naming the way out."""
    result = infer_cli("--model", f"{oms['text_4']},{oms['text_4']}", "--via-ais-bench")
    assert result.returncode == 2 and tools("ais_bench") == []
    assert result.stderr.count("\n") == 1 and "needs the full-length text OM" in result.stderr


def test_multi_device_layout_matches_ais_bench(oms, prep_dir, tmp_path, tools):
    """10 files on 3 devices: chunks of ceil(10 / 3) = 4, 4, 2; one ordinary summary per device inside the
    output folder, none beside it; the kit's own totals in a file of its own name."""
    folder = tmp_path / "ten"
    folder.mkdir()
    for path in sorted((prep_dir / "images").glob("*.npy")):
        (folder / path.name).write_bytes(path.read_bytes())
    kit = infer_cli("--model", oms["vision_4"], "--input", folder, "--output", tmp_path / "kit", "--output_dirname",
                    "v", "--outfmt", "NPY", "--device", "0,1,2")
    real = infer_cli("--model", oms["vision_4"], "--input", folder, "--output", tmp_path / "real", "--output_dirname",
                     "v", "--outfmt", "NPY", "--device", "0,1,2", "--via-ais-bench")
    for result, root in ((kit, tmp_path / "kit"), (real, tmp_path / "real")):
        assert result.returncode == 0, result.stderr
        counts = [len(list((root / "v" / f"device{d}").glob("*_0.npy"))) for d in range(3)]
        assert counts == [4, 4, 2]
        assert sorted(p.name for p in (root / "v").glob("*_summary.json")) == [f"device{d}_summary.json"
                                                                              for d in range(3)]
        assert not (root / "v_summary.json").exists()
        summaries = [json.loads((root / "v" / f"device{d}_summary.json").read_text()) for d in range(3)]
        assert [len(s["filesinfo"]) for s in summaries] == [4, 4, 2]
        lines = [line for line in result.stdout.splitlines() if line.startswith("i:")]
        assert [line.split()[:2] for line in lines] == [["i:0", "device_0"], ["i:1", "device_1"], ["i:2", "device_2"]]
        total = aisbench.parse_throughput(result.stdout)[1]
        assert total == pytest.approx(sum(s["throughput"] for s in summaries))
    assert json.loads((tmp_path / "kit" / "v_devices.json").read_text())["throughput"] == pytest.approx(
        aisbench.parse_throughput(kit.stdout)[1])


def test_stand_in_times_every_batch_loop_times(oms, prep_dir, tmp_path, tools):
    infer_cli("--model", oms["vision_4"], "--input", prep_dir / "images", "--output", tmp_path, "--output_dirname",
              "l", "--loop", 3, "--via-ais-bench")
    saved = json.loads((tmp_path / "l_summary.json").read_text())
    assert saved["NPU_compute_time"]["count"] == 3 * 3  # 10 files at batch 4: 3 batches, each run 3 times
    assert set(saved) == {"filesinfo", "args", "NPU_compute_time", "H2D_latency", "D2H_latency", "throughput",
                          "npu_compute_time_list", "pid"}


def test_busy_npu_is_said_before_timing(oms, tmp_path, tools, monkeypatch):
    monkeypatch.setenv("FAKE_NPU_SMI_OUTPUT", str(NPU_SMI / "910B3_alarm_with_process.txt"))
    warned = infer_cli("--model", oms["vision_4"], "--loop", 2)
    assert warned.returncode == 0
    assert ("warning: NPU device 0 is busy (running python3 (pid 41235, 27356 MB); AI Core 12% busy)"
            in warned.stderr)
    idle = infer_cli("--model", oms["vision_4"], "--loop", 2, "--device", "1", "--require-idle")
    assert idle.returncode == 0 and "busy" not in idle.stderr
    stopped = infer_cli("--model", oms["vision_4"], "--loop", 2, "--require-idle")
    assert stopped.returncode == 2 and stopped.stderr.startswith("error: NPU device 0 is busy")
    assert "drop --require-idle" in stopped.stderr and tools("InferSession")[-1]["device_id"] == 1


def test_acl_datatype_names_are_all_mapped():
    from openclip_ascend.run.sessions import _ACL_DTYPES

    names = "float32 float16 int8 int32 uint8 int16 uint16 uint32 int64 uint64 double bool".split()
    assert sorted(_ACL_DTYPES) == sorted(names)
    assert _ACL_DTYPES["double"] == np.float64 and _ACL_DTYPES["uint64"] == np.uint64


def test_impostor_ais_bench_is_named(monkeypatch, tmp_path):
    site = tmp_path / "site"
    (site / "ais_bench").mkdir(parents=True)
    (site / "ais_bench" / "__init__.py").write_text("")
    dist = site / "ais_bench_benchmark-3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ais-bench-benchmark\nVersion: 3.0\n")
    (dist / "top_level.txt").write_text("ais_bench\n")
    (dist / "RECORD").write_text("ais_bench/__init__.py,,\n")
    monkeypatch.syspath_prepend(str(site))
    forget_ais_bench(monkeypatch)
    (tmp_path / "x.om").write_text("{}")
    with pytest.raises(KitError, match="ais-bench-benchmark, an unrelated LLM-evaluation tool"):
        AscendSession(tmp_path / "x.om")


def test_missing_ais_bench_says_what_to_install(tmp_path, monkeypatch):
    forget_ais_bench(monkeypatch)
    monkeypatch.setitem(sys.modules, "ais_bench", None)
    (tmp_path / "x.om").write_text("{}")
    with pytest.raises(KitError, match="aclruntime and ais_bench wheels"):
        AscendSession(tmp_path / "x.om")


def test_busy_npu_readings_are_recorded_and_marked_in_the_report(tmp_path):
    from openclip_ascend.ascend.npu_smi import idle_check
    from openclip_ascend.report.writer import write_report

    readings, warnings = idle_check([0, 1], text=(NPU_SMI / "910B3_alarm_with_process.txt").read_text())
    assert readings["0"]["busy"] and readings["0"]["aicore_percent"] == 12 and not readings["1"]["busy"]
    assert len(warnings) == 1 and warnings[0].startswith("NPU device 0 is busy")
    with pytest.raises(KitError, match="NPU device 0 is busy"):
        idle_check([0], require_idle=True, text=(NPU_SMI / "910B3_alarm_with_process.txt").read_text())
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "performance.json").write_text(json.dumps(
        {"throughput": {"ascend": {"8": {"vision": 285.0}}}, "latency_ms": {}, "loops": 20, "npu_state": readings,
         "npu_warnings": warnings}))
    assert "**Measured on a busy NPU, figures unreliable**: NPU device 0 is busy" in write_report(tmp_path)[0].read_text()


@pytest.mark.parametrize("log,expected", [
    ("$ atc --output=EXPORT/m\nATC run failed, Please check the detail log\nE10001: Value [x] for parameter [--y] is "
     "invalid.\n", "E10001: Value [x] for parameter [--y] is invalid."),
    ("ATC run failed\n[PID: 4077] 2026-06-01-10:00:00.123 Invalid parameter(E10016): Opname [text] specified in "
     "--input_shape is not found in the model.\n", "E10016: Opname [text] specified in --input_shape is not found"),
    ("ATC run failed\nE19999: Inner Error!\n        Read proto from text ret fail, file: aipp.cfg\n",
     "E19999: Inner Error! Read proto from text ret fail, file: aipp.cfg"),
])
def test_first_error_reads_every_layout_atc_prints(log, expected):
    """CANN up to 8.0 (`CODE: message`), 8.5+ (`[PID: n] <time> <title>(CODE): message`) and an inner error whose
    cause is on the next line: the table gets `CODE: cause`, never the command line the kit wrote above."""
    from openclip_ascend.ascend.atc import first_error

    assert first_error(log).startswith(expected)

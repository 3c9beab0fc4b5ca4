#!/usr/bin/env python3
"""The CPU fallback against PyTorch eager and against the machine's fp32 GEMM rate, in one run.

    python bench/bench_cpu_fallback.py [--model-name ViT-B-32] [--batch-sizes 1,8,16] [--repeats 7]
        [--results-file bench/results/cpu_fallback.json]

Per tower and batch size it times, interleaved round by round so machine noise hits all alike:
the GEMM rate (the roofline), PyTorch eager (open_clip's forward, inference mode), ONNX Runtime on
the kit's export, ONNX Runtime on torch's stock export of open_clip's forward (what the kit's graph
rewrites are measured against) and the int8 fallback. It prints samples/s, ratios to eager, the
share of the roofline (samples/s × model FLOP per sample / GEMM FLOP/s of the same round) and the
int8 cosine to fp32. The model FLOP is open_clip's forward's; the kit's graph executes a little less
(its last block runs for the pooled token only), which the header line states. Random weights:
speed and agreement do not depend on them.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclip_ascend.backends import OnnxRuntimeSession  # noqa: E402
from openclip_ascend.cli import csv_ints  # noqa: E402
from openclip_ascend.export import export_tower, onnx_path, plain_attention, quantize_int8  # noqa: E402
from openclip_ascend.towers import example_inputs, tower_module  # noqa: E402
from openclip_ascend.files import write_json  # noqa: E402
from openclip_ascend.metrics import compare_embeddings  # noqa: E402
from openclip_ascend.models import load_model  # noqa: E402
from openclip_ascend.tables import markdown_table  # noqa: E402


ROOFLINE_SHAPES = ((2048, 2048, 2048), (800, 768, 3072), (800, 3072, 768), (1232, 512, 2048))


def gemm_rate(shapes=ROOFLINE_SHAPES, repeats=10, rounds=3):
    """fp32 matrix-multiply FLOP/s of this machine (torch's BLAS, all threads), best over square and
    transformer-shaped products and rounds: the roofline no model run can beat."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(repeats):
                a @ b
            best = max(best, 2 * m * k * n * repeats / (time.perf_counter() - start))
    return best


def flops_per_sample(module, model, inputs):
    """FLOP of one sample, counted on plain attention (the fused fast path hides its matmuls from the counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), plain_attention(model):
        module(torch.from_numpy(inputs[:1]))
    return counter.get_total_flops()


def timed(run, inputs, min_seconds=0.25):
    """Seconds per run, over as many runs as fill ``min_seconds`` (batch 1 runs take ~20 ms, too short
    to time one by one on a noisy machine), after an untimed run that lets the previous runner's
    idle-spinning threads go quiet."""
    run(inputs)
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < min_seconds:
        run(inputs)
        runs += 1
    return (time.perf_counter() - start) / runs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--results-file", default="bench/results/cpu_fallback.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model_name)
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    prefix, stock = work / "kit", work / "stock"
    rows, records, executed = [], [], {}
    print(f"torch threads {torch.get_num_threads()}; roofline = best fp32 GEMM rate, measured every round")
    for tower in args.towers.split(","):
        export_tower(model, tower, onnx_path(prefix, tower))
        export_tower(model, tower, onnx_path(stock, tower), rewrite=False)
        eager = tower_module(model, tower)
        runners = {
            "eager": lambda x, m=eager: m(torch.from_numpy(x)),
            "onnxruntime": OnnxRuntimeSession(onnx_path(prefix, tower)).run,
            "onnxruntime (stock export)": OnnxRuntimeSession(onnx_path(stock, tower)).run,
            "onnxruntime-int8": OnnxRuntimeSession(quantize_int8(prefix, tower)).run,
        }
        single = example_inputs(model, tower, 1)
        flops = flops_per_sample(eager, model, single)
        executed[tower] = flops_per_sample(tower_module(model, tower, pooled_last_block=True), model, single) / flops
        for batch in csv_ints(args.batch_sizes):
            inputs = example_inputs(model, tower, batch, seed=batch)
            with torch.inference_mode():
                fp32 = runners["onnxruntime"](inputs)
                cosine = compare_embeddings(fp32, runners["onnxruntime-int8"](inputs))["min_cosine"]
                parity = compare_embeddings(eager(torch.from_numpy(inputs)).numpy(), fp32)["max_abs_diff"]
                times, rooflines = {name: [] for name in runners}, []
                for _ in range(args.repeats):
                    rooflines.append(gemm_rate(ROOFLINE_SHAPES[:2], repeats=5, rounds=1))
                    for name, run in runners.items():
                        times[name].append(timed(run, inputs))
            fps = {name: batch / float(np.median(t)) for name, t in times.items()}
            share = {name: float(np.median([batch / t * flops / r for t, r in zip(samples, rooflines)]))
                     for name, samples in times.items()}
            roofline = float(np.median(rooflines))
            records.append({"tower": tower, "batch": batch, "fps": fps, "roofline_share": share,
                            "gflop_per_sample": flops / 1e9, "kit_graph_flop_fraction": executed[tower],
                            "roofline_gflops": roofline / 1e9, "int8_min_cosine_to_fp32": cosine,
                            "fp32_max_abs_diff_to_eager": parity})
            rows.append([tower, batch, f"{roofline / 1e9:.0f}", f"{fps['eager']:.1f}", f"{fps['onnxruntime']:.1f}",
                         f"{fps['onnxruntime'] / fps['eager']:.2f}",
                         f"{fps['onnxruntime'] / fps['onnxruntime (stock export)']:.2f}",
                         f"{share['eager']:.0%}", f"{share['onnxruntime']:.0%}", f"{fps['onnxruntime-int8']:.1f}",
                         f"{fps['onnxruntime-int8'] / fps['onnxruntime']:.2f}", f"{cosine:.5f}"])
            print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(HEADERS, rows)
    print(table)
    write_json(args.results_file, {"model_name": args.model_name, "repeats": args.repeats, "results": records})
    graph = ", ".join(f"{tower} {fraction:.1%}" for tower, fraction in executed.items())
    Path(args.results_file).with_suffix(".md").write_text(
        f"{args.model_name}, random weights, median of {args.repeats} interleaved rounds; roofline = best fp32 "
        f"GEMM rate measured in each round; roofline share counts open_clip's model FLOP (the kit's graph "
        f"executes {graph} of it)\n\n{table}\n", encoding="utf-8")


HEADERS = ["tower", "batch", "GEMM GFLOP/s", "eager /s", "ORT /s", "ORT ÷ eager", "ORT ÷ stock export", "eager roofline",
           "ORT roofline", "int8 /s", "int8 ÷ ORT", "int8 min cos"]

if __name__ == "__main__":
    main()

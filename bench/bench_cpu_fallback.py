#!/usr/bin/env python3
"""The CPU fallback against PyTorch eager and against the machine's fp32 GEMM rate, in one run.

    python bench/bench_cpu_fallback.py [--model-name ViT-B-32] [--batch-sizes 1,8,16] [--repeats 5]
        [--results-file bench/results/cpu_fallback.json]

Per tower and batch size it times, interleaved round by round so machine noise hits all alike:
PyTorch eager (inference mode), ONNX Runtime on the kit's export, ONNX Runtime on torch's stock attention export
(what the kit's attention rewrite is measured against) and the int8 fallback. It prints samples/s,
ratios to eager, the share of the roofline (samples/s × FLOP per sample / GEMM FLOP/s) and the int8
cosine to fp32. Random weights: speed and agreement do not depend on them.
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
from openclip_ascend.export import (example_inputs, export_tower, onnx_path, plain_attention,  # noqa: E402
                                    quantize_int8, tower_module)
from openclip_ascend.files import write_json  # noqa: E402
from openclip_ascend.metrics import compare_embeddings  # noqa: E402
from openclip_ascend.models import load_model  # noqa: E402
from openclip_ascend.reports import markdown_table  # noqa: E402


def gemm_rate(shapes=((2048, 2048, 2048), (800, 768, 3072), (800, 3072, 768), (1232, 512, 2048)), repeats=10,
              rounds=3):
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


def flops_per_sample(model, tower, inputs):
    """FLOP of one sample, counted on plain attention (the fused fast path hides its matmuls from the counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), plain_attention(model):
        tower_module(model, tower)(torch.from_numpy(inputs[:1]))
    return counter.get_total_flops()


def timed(run, inputs):
    """One timed run after an untimed one, so the previous runner's idle-spinning threads are gone."""
    run(inputs)
    start = time.perf_counter()
    run(inputs)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-name", default="ViT-B-32")
    parser.add_argument("--batch-sizes", default="1,8,16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--towers", default="vision,text")
    parser.add_argument("--results-file", default="bench/results/cpu_fallback.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = load_model(args.model_name)
    work = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    prefix, stock = work / "kit", work / "stock"
    rows, records = [], []
    roofline = gemm_rate()
    print(f"fp32 GEMM rate (roofline): {roofline / 1e9:.0f} GFLOP/s, torch threads {torch.get_num_threads()}")
    for tower in args.towers.split(","):
        export_tower(model, tower, onnx_path(prefix, tower))
        export_tower(model, tower, onnx_path(stock, tower), rewrite_attention=False)
        eager = tower_module(model, tower)
        runners = {
            "eager": lambda x, m=eager: m(torch.from_numpy(x)),
            "onnxruntime": OnnxRuntimeSession(onnx_path(prefix, tower)).run,
            "onnxruntime (stock attention)": OnnxRuntimeSession(onnx_path(stock, tower)).run,
            "onnxruntime-int8": OnnxRuntimeSession(quantize_int8(prefix, tower)).run,
        }
        flops = flops_per_sample(model, tower, example_inputs(model, tower, 1))
        for batch in csv_ints(args.batch_sizes):
            inputs = example_inputs(model, tower, batch, seed=batch)
            with torch.inference_mode():
                fp32 = runners["onnxruntime"](inputs)
                cosine = compare_embeddings(fp32, runners["onnxruntime-int8"](inputs))["min_cosine"]
                parity = compare_embeddings(eager(torch.from_numpy(inputs)).numpy(), fp32)["max_abs_diff"]
                times = {name: [] for name in runners}
                for _ in range(args.repeats):
                    for name, run in runners.items():
                        times[name].append(timed(run, inputs))
            fps = {name: batch / float(np.median(t)) for name, t in times.items()}
            record = {"tower": tower, "batch": batch, "fps": fps, "gflop_per_sample": flops / 1e9,
                      "roofline_gflops": roofline / 1e9, "int8_min_cosine_to_fp32": cosine,
                      "fp32_max_abs_diff_to_eager": parity}
            records.append(record)
            share = {name: value * flops / roofline for name, value in fps.items()}
            rows.append([tower, batch, f"{fps['eager']:.1f}", f"{fps['onnxruntime']:.1f}",
                         f"{fps['onnxruntime'] / fps['eager']:.2f}",
                         f"{fps['onnxruntime'] / fps['onnxruntime (stock attention)']:.2f}",
                         f"{share['eager']:.0%}", f"{share['onnxruntime']:.0%}", f"{fps['onnxruntime-int8']:.1f}",
                         f"{fps['onnxruntime-int8'] / fps['onnxruntime']:.2f}", f"{cosine:.5f}"])
            print(markdown_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    table = markdown_table(HEADERS, rows)
    print(table)
    write_json(args.results_file, {"model_name": args.model_name, "repeats": args.repeats, "results": records})
    Path(args.results_file).with_suffix(".md").write_text(
        f"fp32 GEMM rate {roofline / 1e9:.0f} GFLOP/s; {args.model_name}, random weights, median of "
        f"{args.repeats} interleaved rounds\n\n{table}\n", encoding="utf-8")


HEADERS = ["tower", "batch", "eager /s", "ORT /s", "ORT ÷ eager", "ORT ÷ stock-attention ORT", "eager roofline",
           "ORT roofline", "int8 /s", "int8 ÷ ORT", "int8 min cos"]

if __name__ == "__main__":
    main()

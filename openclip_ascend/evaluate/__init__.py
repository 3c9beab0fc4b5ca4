"""Step 5: recall@k as CLIP_benchmark defines it, zero-shot classification, the verdict against PyTorch, and where fp16 breaks (precision, AIPP's cost)."""

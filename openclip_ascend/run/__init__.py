"""Step 4: sessions behind one interface (ONNX Runtime, PyTorch, an OM through ais_bench's InferSession) and the runner that lays out inputs and outputs as ais_bench does."""

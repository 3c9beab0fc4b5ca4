"""Step 2's model: loading open_clip models and their weights, the towers as modules, the ONNX export and its NPU-shaped and length-trimmed graphs."""

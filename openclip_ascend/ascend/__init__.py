"""The Ascend tools: npu-smi, atc and its presets, AIPP, ais_bench's command line, operator dumps and msprof profiles — the code that builds their commands and reads their output."""

"""Shared by the fakes: append one JSON line describing a call to $FAKE_TOOL_LOG."""

import json
import os


def record(tool, **fields):
    path = os.environ.get("FAKE_TOOL_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"tool": tool, **fields}) + "\n")

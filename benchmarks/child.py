"""Runs one benchmark function in another interpreter (e.g. a venv with torch): a clean process
with no TensorFlow threads, whose JSON result comes back as a dict."""

from __future__ import annotations

import json
import os
import subprocess


def run_in(python: str, module: str, call: str) -> dict:
    """``module.call`` evaluated by ``python`` with benchmarks/ on its path; its printed JSON,
    or ``{"error": ...}`` with the last line of its stderr."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (f"import sys, json; sys.path.insert(0, {here!r}); import {module}; "
            f"print(json.dumps({module}.{call}))")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{python}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])

"""scripts/gpu_check.py, the check of every CUDA path, run as CI does: ``--device cpu``, its smaller
version, every step on the CPU, as a user runs it (a subprocess)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.py"
STEPS = ["data", "train-fp32", "train-amp", "train-fp16", "train-host", "supernet", "latency", "ray-search", "export"]


def _run(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=SCRIPT.parents[1])


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_the_cpu_and_prints_its_table(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "check.json"
    p = _run("--device", "cpu", "--json", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["step"] for r in result["rows"]] == STEPS and all(r["ok"] for r in result["rows"])
    assert all(r["device"] == "cpu" and r["peak_mib"] == "-" and r["util"] == "-" for r in result["rows"])
    header = "| step | device | images/s | peak GPU MiB | GPU util | result | seconds | note |"
    assert header in p.stdout and p.stdout.count("| pass |") == len(STEPS)
    assert f"{len(STEPS)}/{len(STEPS)} steps passed" in p.stdout
    data = next(r for r in result["rows"] if r["step"] == "data")
    assert "labels equal, max abs diff 0;" in data["note"]  # the device path's batches are the CPU path's, bitwise


def test_the_gpu_check_refuses_an_unknown_step_or_a_missing_gpu_in_one_line():
    p = _run("--device", "cpu", "--steps", "data,warp-drive", timeout=120)
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.strip().splitlines() == ["gpu_check: --steps: unknown step(s) 'warp-drive'; allowed: "
                                             + ", ".join(STEPS)]
    import torch

    if not torch.cuda.is_available():
        p = _run("--device", "cuda", timeout=120)
        assert p.returncode != 0 and len(p.stderr.strip().splitlines()) == 1 and "--device cpu" in p.stderr

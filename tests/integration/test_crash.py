"""A short crash campaign: every command killed at a spread of its durable steps
(tools/crash-campaign; `tools/crash-campaign --all` crashes at every step)."""
import os
import subprocess

from conftest import BIN, ROOT


def test_crash_at_durable_steps_loses_nothing(tmp_path):
    proc = subprocess.run([os.path.join(ROOT, "tools", "crash-campaign"), "--points", "8", "--bin", BIN,
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=900)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for op in ("create", "incremental", "delete", "prune", "gc", "restore", "inplace", "copy"):
        line = next(l for l in proc.stdout.splitlines() if l.startswith(op + ":"))
        steps = int(line.split()[1])
        assert steps >= 3, f"{op} has suspiciously few durable steps: {line}"
    assert "no problem found" in proc.stdout

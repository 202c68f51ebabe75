"""tools/measure-scale at a small size: every command it measures runs against stores of 2^10
and 2^12 distinct chunks and gives the answers a user would check. Its figures are a
benchmark's (docs/PERFORMANCE.md), not asserted here."""
import json
import os
import subprocess

from conftest import BIN, ROOT


def test_measure_scale_runs_every_command_and_dedup_is_exact(tmp_path):
    proc = subprocess.run([os.path.join(ROOT, "tools", "measure-scale"), "--exps", "10,12", "--bin", BIN, "--big-mib", "64",
                           "--work", str(tmp_path), "--json", "--no-targets"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for r in report["results"]:
        # Before the gc the store holds the N chunks of the scale image, the 64 MiB disk's
        # 1024 and the 5 x 64 of the small disks: nothing twice, nothing lost.
        assert r["stored_chunks"] == r["chunks"] + 1024 + 5 * 64, r
        assert r["dedup_bytes_stored"] == 0, "the same data under another disk must store nothing"
        assert r["check_problems"] == 0
        assert r["gc_packs_removed"] >= 1, "the deleted small snapshot's pack is collected"
        assert 1 <= r["segments"] <= 8
        assert set(r["rss_mib"]) == {"first N", "small create", "incremental", "restore", "mount", "export", "diff",
                                     "stats", "check", "check --read-data", "gc"}

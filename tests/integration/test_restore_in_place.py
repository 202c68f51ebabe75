"""restore --in-place and diff: only what differs is written; diff names exactly what changed."""
import os
import shutil
import signal
import subprocess
import time

from conftest import BIN, CHUNK, Loop, chunk_list, e2fsck_partition, partition_bytes, sha256


def differing_chunks(a, b, chunk=CHUNK):
    """Chunk numbers where files a and b differ (b no shorter than a)."""
    la, lb = chunk_list(a, chunk), chunk_list(b, chunk)
    return [i for i in range(max(len(la), len(lb))) if i >= len(la) or i >= len(lb) or la[i] != lb[i]]


def merged_ranges(chunks, size, chunk=CHUNK):
    ranges = []
    for c in chunks:
        start, end = c * chunk, min((c + 1) * chunk, size)
        if ranges and ranges[-1][1] == start:
            ranges[-1][1] = end
        else:
            ranges.append([start, end])
    return ranges


def test_in_place_writes_only_the_changed_chunks(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "before")
    target = tmp_path / "vm.img"
    shutil.copyfile(test_disk["v2"], target)  # the disk after the "mistake"
    expected = differing_chunks(test_disk["v1"], test_disk["v2"])
    assert 0 < len(expected) < len(chunk_list(test_disk["v1"], CHUNK)) // 4

    before = sha256(target)
    dry = ds.run("restore", snap, target, "--in-place", "--dry-run", "--json").json()
    assert sha256(target) == before, "a dry run writes nothing"
    assert dry["DryRun"] is True and dry["BytesWritten"] == 0
    assert dry["ChunksDiffering"] == len(expected)
    assert dry["BytesExamined"] == test_disk["disk_size"]

    r = ds.run("restore", snap, target, "--in-place", "--verify", "--json").json()
    assert r["Mode"] == "in-place" and r["Verified"] is True
    assert r["ChunksDiffering"] == len(expected)
    assert r["BytesWritten"] == len(expected) * CHUNK, "only the changed chunks are written"
    assert sha256(target) == sha256(test_disk["v1"])
    e2fsck_partition(str(target), test_disk["partition_offset"], test_disk["partition_size"])

    again = ds.run("restore", snap, target, "--in-place", "--json").json()
    assert again["ChunksDiffering"] == 0 and again["BytesWritten"] == 0

    text = ds.run("restore", snap, target, "--in-place").out
    assert "examined" in text and "0 chunks differ" in text and "written" in text


def test_in_place_sets_a_larger_file_to_the_snapshot_size_and_zeroes_as_holes(ds, tmp_path):
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.write(os.urandom(3 * CHUNK))
        f.truncate(10 * CHUNK + 1000)  # a hole, and a short last chunk
    snap = ds.create(src, "sized")
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.write(os.urandom(12 * CHUNK))  # data everywhere, longer than the snapshot
    r = ds.run("restore", snap, target, "--in-place", "--json").json()
    assert r["ResizedFrom"] == 12 * CHUNK
    assert os.path.getsize(target) == 10 * CHUNK + 1000
    assert sha256(target) == sha256(src)
    # The zero chunks became holes: the file holds little more than its 3 data chunks.
    assert os.stat(target).st_blocks * 512 <= 5 * CHUNK


def test_in_place_on_a_loop_device(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "before")
    backing = tmp_path / "dev.img"
    shutil.copyfile(test_disk["v2"], backing)
    expected = differing_chunks(test_disk["v1"], test_disk["v2"])
    with Loop(str(backing)) as dev:
        r = ds.run("restore", snap, dev, "--in-place", "--verify", "--json").json()
        assert r["ChunksDiffering"] == len(expected) and r["Verified"] is True
        assert r["BytesWritten"] == len(expected) * CHUNK
    assert sha256(backing) == sha256(test_disk["v1"])


def test_in_place_partition_onto_a_partition_image(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "before")
    off, size = test_disk["partition_offset"], test_disk["partition_size"]
    part = tmp_path / "part1.img"
    part.write_bytes(partition_bytes(test_disk["v2"], off, size))
    r = ds.run("restore", snap, part, "--in-place", "--partition", "1", "--json").json()
    assert 0 < r["ChunksDiffering"] and r["BytesExamined"] == size
    assert partition_bytes(test_disk["v1"], off, size) == part.read_bytes()


def test_in_place_refuses_a_smaller_or_busy_target(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "before")
    small = tmp_path / "small.img"
    shutil.copyfile(test_disk["v2"], small)
    os.truncate(small, test_disk["disk_size"] - CHUNK)
    r = ds.run("restore", snap, small, "--in-place", check=False)
    assert r.code == 2 and "Target.TooSmall" in r.err
    assert os.path.getsize(small) == test_disk["disk_size"] - CHUNK

    missing = ds.run("restore", snap, tmp_path / "nope.img", "--in-place", check=False)
    assert missing.code == 3 and "Target.NotFound" in missing.err

    # An image file a loop device reads is in use.
    busy = tmp_path / "busy.img"
    shutil.copyfile(test_disk["v2"], busy)
    with Loop(str(busy)) as dev:
        r = ds.run("restore", snap, busy, "--in-place", check=False)
        assert r.code == 4 and "Target.InUse" in r.err and dev in r.err
    assert sha256(busy) == sha256(test_disk["v2"])

    # A mounted block device is in use; so is it for a full restore.
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(test_disk["disk_size"])
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Loop(str(fs)) as dev:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            for extra in (["--in-place"], ["--force"]):
                r = ds.run("restore", snap, dev, *extra, check=False)
                assert r.code == 4 and "Target.InUse" in r.err and str(mnt) in r.err, r.err
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    subprocess.run(["e2fsck", "-fn", str(fs)], check=True, capture_output=True)


def test_in_place_killed_halfway_finishes_when_run_again(ds, tmp_path):
    mib = 256
    src, target = tmp_path / "src.img", tmp_path / "target.img"
    for path in (src, target):
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
    snap = ds.create(src, "wanted")
    with open(src, "rb") as f:
        first = f.read(4096)
    env = dict(os.environ, DISKSNAP_WORKERS="1")
    proc = subprocess.Popen([BIN, "--repo", ds.repo, "restore", snap, str(target), "--in-place"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(target, "rb") as f:
            if f.read(4096) == first:
                break
        assert proc.poll() is None, "the restore ended before it could be killed"
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert sha256(target) != sha256(src), "killed halfway: some chunks are still to be written"
    r = ds.run("restore", snap, target, "--in-place", "--verify", "--json").json()
    total = mib * (1 << 20) // CHUNK
    assert 0 < r["ChunksDiffering"] < total, "the second run writes only what the first did not"
    assert sha256(target) == sha256(src)


def test_diff_between_snapshots_names_the_changed_ranges(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "monday")
    b = ds.create(test_disk["v2"], "tuesday")
    expected = differing_chunks(test_disk["v1"], test_disk["v2"])
    size = test_disk["disk_size"]
    d = ds.run("diff", "monday", "tuesday", "--json").json()
    assert d["From"] == a and d["To"] == b and d["ToKind"] == "snapshot"
    assert d["BytesRead"] == 0, "two snapshots are compared by their indexes"
    assert d["ChangedChunks"] == len(expected)
    assert [[r["Start"], r["End"]] for r in d["Ranges"]] == merged_ranges(expected, size)
    assert d["ChangedBytes"] == sum(e - s for s, e in merged_ranges(expected, size))
    # The test disk's only partition starts at 1 MiB: every change is in it.
    off, psize = test_disk["partition_offset"], test_disk["partition_size"]
    for r in d["Ranges"]:
        assert r["Partitions"] == ([1] if r["Start"] < off + psize and r["End"] > off else [])
    assert all(r["Partitions"] == [1] for r in d["Ranges"])

    same = ds.run("diff", a, a, "--json").json()
    assert same["ChangedChunks"] == 0 and same["Ranges"] == []


def test_diff_against_the_live_disk_and_an_exact_small_change(ds, test_disk, tmp_path):
    image = tmp_path / "live.img"
    shutil.copyfile(test_disk["v1"], image)
    ds.create(image, "base")
    assert ds.run("diff", "base", "--json").json()["ChangedChunks"] == 0
    # Change 10 bytes in one chunk, and one byte in two adjacent chunks: two ranges.
    with open(image, "r+b") as f:
        f.seek(5 * CHUNK + 100)
        f.write(b"0123456789")
        f.seek(40 * CHUNK - 1)
        f.write(b"\xff\xff")
    d = ds.run("diff", "base", str(image), "--json").json()
    assert d["ToKind"] == "disk" and d["BytesRead"] == test_disk["disk_size"]
    assert [[r["Start"], r["End"]] for r in d["Ranges"]] == [[5 * CHUNK, 6 * CHUNK], [39 * CHUNK, 41 * CHUNK]]
    assert d["Ranges"][0]["Partitions"] == [], "the first MiB is outside the partition"
    assert d["Ranges"][1]["Partitions"] == [1]
    text = ds.run("diff", "base").out
    assert f"{39 * CHUNK}-{41 * CHUNK}" in text and "partition 1" in text

    # A disk that grew: the new tail is a changed range.
    with open(image, "r+b") as f:
        f.truncate(test_disk["disk_size"] + 3 * CHUNK)
    grown = ds.run("diff", "base", "--json").json()
    assert grown["ToSize"] == test_disk["disk_size"] + 3 * CHUNK
    assert [grown["Ranges"][-1]["Start"], grown["Ranges"][-1]["End"]] == [test_disk["disk_size"], test_disk["disk_size"] + 3 * CHUNK]

    r = ds.run("diff", "base", tmp_path / "nothing-here", check=False)
    assert r.code == 3 and "neither a snapshot nor a disk" in r.err


def test_new_file_restore_killed_leaves_no_final_name_and_the_rerun_cleans_up(ds, tmp_path):
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    snap = ds.create(src, "wanted")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "vm.img"
    env = dict(os.environ, DISKSNAP_WORKERS="1")
    proc = subprocess.Popen([BIN, "--repo", ds.repo, "restore", snap, str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial = []
    while time.monotonic() < deadline and not partial:
        partial = [n for n in os.listdir(out_dir) if n.endswith(".disksnap-partial")]
        assert proc.poll() is None, "the restore ended before it could be killed"
        time.sleep(0.001)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists(), "a half-written file never has the final name"
    assert len(partial) == 1 and (out_dir / partial[0]).exists()
    # An unrelated file that merely looks similar is left alone.
    (out_dir / ".vm.img.notes.disksnap-partial").write_bytes(b"keep")
    r = ds.run("restore", snap, out, "--verify", "--json").json()
    assert r["Mode"] == "new" and r["Verified"] is True
    assert sha256(out) == sha256(src)
    assert sorted(os.listdir(out_dir)) == [".vm.img.notes.disksnap-partial", "vm.img"], "the dead restore's partial file is removed"


def test_odd_sized_snapshot_onto_a_device_zeroes_the_short_last_chunk(ds, tmp_path):
    src = tmp_path / "odd.img"
    with open(src, "wb") as f:
        f.write(os.urandom(CHUNK))
        f.truncate(3 * CHUNK + 1000)  # zero chunks, the last one 1000 bytes: not whole sectors
    snap = ds.create(src, "odd")
    backing = tmp_path / "dev.img"
    backing.write_bytes(os.urandom(4 * CHUNK))
    with Loop(str(backing)) as dev:
        r = ds.run("restore", snap, dev, "--in-place", "--verify", "--json").json()
        assert r["ChunksDiffering"] == 4 and r["Verified"] is True
    with open(backing, "rb") as f:
        assert f.read(3 * CHUNK + 1000) == src.read_bytes()
    backing.write_bytes(os.urandom(4 * CHUNK))
    with Loop(str(backing)) as dev:
        ds.run("restore", snap, dev, "--force", "--verify")
    with open(backing, "rb") as f:
        assert f.read(3 * CHUNK + 1000) == src.read_bytes()

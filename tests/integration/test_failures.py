"""Bad input, corruption, concurrency and crashes: clear coded errors, nothing lost."""
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import pytest
from conftest import BIN, DiskSnap, Loop, sha256


def only_file(directory, suffix):
    names = [n for n in os.listdir(directory) if n.endswith(suffix)]
    assert len(names) == 1, names
    return os.path.join(directory, names[0])


def flip_byte(path, offset):
    """Inverts one byte of a file: a bit-rot the store must detect."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def largest_pack(repo):
    """Each worker fills packs of its own: a small snapshot leaves one pack per worker."""
    directory = os.path.join(repo, "packs")
    names = [n for n in os.listdir(directory) if n.endswith(".pack")]
    assert names
    return os.path.join(directory, max(names, key=lambda n: os.path.getsize(os.path.join(directory, n))))


@pytest.mark.parametrize("name", ["a", "1abc", "auto-x", "http://x", "bad name", "x" * 129])
def test_malformed_name_is_refused_with_its_code(ds, test_disk, name):
    r = ds.run("create", test_disk["v1"], "--name", name, check=False)
    assert r.code == 2 and "InvalidSnapshotName.Malformed" in r.err
    assert name in r.err or len(name) > 100


def test_malformed_description_and_json_error(ds, test_disk):
    r = ds.run("create", test_disk["v1"], "--name", "ok1", "--description", "https://x", "--json", check=False)
    assert r.code == 2
    body = json.loads(r.out)
    assert body["Code"] == "InvalidDescription.Malformed" and body["RequestId"]


def test_missing_source_and_snapshot(ds, tmp_path, test_disk):
    r = ds.run("create", tmp_path / "nope.img", "--name", "x1", check=False)
    assert r.code == 3 and "InvalidDiskId.NotFound" in r.err and "nope.img" in r.err
    ds.create(test_disk["v1"], "one")
    for command in (["show", "s-aaaaaaaaaaaaaaaaaaaa"], ["restore", "missing", tmp_path / "o.img"], ["delete", "missing"]):
        r = ds.run(*command, check=False)
        assert r.code == 3 and "InvalidSnapshotId.NotFound" in r.err
    assert not os.path.exists(tmp_path / "o.img")


def test_missing_repository(tmp_path):
    r = DiskSnap(str(tmp_path / "none")).run("list", check=False)
    assert r.code == 3 and "Repository.NotFound" in r.err


def test_existing_target_needs_force(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "one")
    target = tmp_path / "exists.img"
    target.write_bytes(b"precious")
    r = ds.run("restore", snap, target, check=False)
    assert r.code == 4 and "Target.Exists" in r.err
    assert target.read_bytes() == b"precious"
    ds.run("restore", snap, target, "--force")
    assert sha256(target) == sha256(test_disk["v1"])


def test_names_are_unique_per_disk_and_ambiguous_across_disks(ds, test_disk):
    a = ds.create(test_disk["v1"], "daily")
    again = ds.run("create", test_disk["v1"], "--name", "daily", check=False)
    assert again.code == 2 and "InvalidSnapshotName.Duplicate" in again.err and a in again.err
    b = ds.create(test_disk["v2"], "daily")  # another disk may use the name
    r = ds.run("show", "daily", check=False)
    assert r.code == 2 and a in r.err and b in r.err
    assert ds.show(b)["SnapshotId"] == b


def test_delete_removes_record_and_index(ds, test_disk):
    a = ds.create(test_disk["v1"], "keep")
    b = ds.create(test_disk["v2"], "drop")
    ds.run("delete", "drop")
    assert [r["SnapshotId"] for r in ds.run("list", "--json").json()] == [a]
    assert not os.path.exists(os.path.join(ds.repo, "fixed", b + ".fidx"))
    assert ds.run("check", "--read-data").code == 0


def test_flipped_byte_in_pack_data_is_found_and_never_restored(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "one")
    pack = largest_pack(ds.repo)
    flip_byte(pack, 5000)
    structural = ds.run("check", check=False)
    assert structural.code == 0, "a data byte is invisible to the structural check by design"
    deep = ds.run("check", "--read-data", check=False)
    assert deep.code == 1
    assert "Chunk.Corrupt" in deep.out and os.path.basename(pack)[:-5] in deep.out and snap in deep.out
    out = tmp_path / "out.img"
    r = ds.run("restore", snap, out, check=False)
    assert r.code == 6 and "Chunk.Corrupt" in r.err and snap in r.err and "offset" in r.err
    assert not os.path.exists(out), "no partial target may carry the final name"
    assert [n for n in os.listdir(tmp_path) if "disksnap-partial" in n] == []


def test_truncated_index_segment_is_reported(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "one")
    segment = only_file(os.path.join(ds.repo, "index"), ".idx")
    os.truncate(segment, os.path.getsize(segment) // 2)
    r = ds.run("check", check=False)
    assert r.code == 1 and "Repository.Corrupt" in r.out and os.path.basename(segment) in r.out
    assert "Chunk.Missing" in r.out and snap in r.out
    restore = ds.run("restore", snap, tmp_path / "o.img", check=False)
    assert restore.code == 6 and not os.path.exists(tmp_path / "o.img")


def test_deleted_pack_is_reported_with_affected_snapshots(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "one")
    pack = largest_pack(ds.repo)
    os.remove(pack)
    r = ds.run("check", check=False)
    assert r.code == 1 and "is missing" in r.out and snap in r.out
    restore = ds.run("restore", snap, tmp_path / "o.img", check=False)
    assert restore.code == 6 and "Chunk.Missing" in restore.err
    assert not os.path.exists(tmp_path / "o.img")


def test_damaged_fixed_index_and_record(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "one")
    b = ds.create(test_disk["v1"], "two")
    fidx = os.path.join(ds.repo, "fixed", a + ".fidx")
    with open(fidx, "r+b") as f:
        f.seek(4096 + 40)
        f.write(b"\x01")
    record = os.path.join(ds.repo, "snapshots", b + ".json")
    with open(record, "w") as f:
        f.write("{ not json")
    r = ds.run("check", check=False)
    assert r.code == 1 and a in r.out and b in r.out and "entries checksum" in r.out
    restore = ds.run("restore", a, tmp_path / "o.img", check=False)
    assert restore.code == 6 and "Repository.Corrupt" in restore.err
    listed = ds.run("list", "--json")  # the damaged record does not hide the others
    assert [r["SnapshotId"] for r in listed.json()] == [a]
    assert "Repository.Corrupt" in listed.err and b in listed.err


def test_concurrent_create_of_one_disk_is_refused(ds, test_disk):
    disk = ds.run("disk", "add", test_disk["v1"], "--name", "vm1", "--json").json()["DiskId"]
    # Hold the disk's creation lock the way a running create does.
    with open(os.path.join(ds.repo, "locks", f"disk-{disk}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        r = ds.run("create", "vm1", "--name", "second", "--json", check=False)
    assert r.code == 5 and "IncorrectDiskStatus.CreatingSnapshot" in r.err
    assert json.loads(r.out)["HttpStatus"] == 403
    ds.create(disk, "third")  # free again


def test_two_processes_racing_on_one_disk_exactly_one_wins(ds, tmp_path):
    image = big_random_image(tmp_path, 128)
    ds.run("disk", "add", image, "--name", "racer")
    env = dict(os.environ, DISKSNAP_WORKERS="1")
    procs = [subprocess.Popen([BIN, "--repo", ds.repo, "create", "racer", "--name", f"race{i}"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 5], results
    loser = next(r for r in results if r[2] == 5)
    assert "IncorrectDiskStatus.CreatingSnapshot" in loser[1]
    assert [r["Status"] for r in ds.run("list", "--json").json()] == ["accomplished"]


def test_parallel_creates_of_different_sources_both_succeed(ds, test_disk, tmp_path):
    ds.run("init")
    procs = [subprocess.Popen([BIN, "--repo", ds.repo, "create", test_disk[v], "--name", v], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in ("v1", "v2")]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert ds.run("check", "--read-data").code == 0
    for v in ("v1", "v2"):
        ds.run("restore", v, tmp_path / f"{v}.img")
        assert sha256(tmp_path / f"{v}.img") == sha256(test_disk[v])


def big_random_image(tmp_path, mib=192):
    image = tmp_path / "big.img"
    with open(image, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return image


def wait_for_work_area_pack(repo, proc, timeout=60):
    """Blocks until the create has a pack in its work area: mid-pipeline, record written."""
    deadline = time.monotonic() + timeout
    tmp = os.path.join(repo, "tmp")
    while time.monotonic() < deadline:
        for area in os.listdir(tmp) if os.path.isdir(tmp) else []:
            path = os.path.join(tmp, area)
            if os.path.isdir(path) and any(n.endswith(".pack") for n in os.listdir(path)):
                return
        assert proc.poll() is None, "create ended before it could be killed"
        time.sleep(0.001)
    raise AssertionError("create never started writing")


def test_kill_9_during_create_leaves_a_valid_repository(ds, test_disk, tmp_path):
    keep = ds.create(test_disk["v1"], "before")
    image = big_random_image(tmp_path, 256)
    proc = subprocess.Popen([BIN, "--repo", ds.repo, "create", image, "--name", "killed"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, DISKSNAP_WORKERS="1"))
    wait_for_work_area_pack(ds.repo, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    listed = {r["SnapshotName"]: r for r in ds.run("list", "--json").json()}
    assert listed["killed"]["Status"] == "failed"
    assert "ended before" in listed["killed"]["FailureReason"]
    assert ds.run("check", "--read-data").code == 0
    r = ds.run("restore", "killed", tmp_path / "k.img", check=False)
    assert r.code == 4 and "IncorrectSnapshotStatus" in r.err
    ds.run("restore", keep, tmp_path / "keep.img")
    assert sha256(tmp_path / "keep.img") == sha256(test_disk["v1"])
    ds.create(test_disk["v2"], "after")
    retry = ds.create(image, "retried")  # the dead creator does not block its disk
    assert ds.show(retry)["Status"] == "accomplished"
    stored = json.load(open(os.path.join(ds.repo, "snapshots", listed["killed"]["SnapshotId"] + ".json")))
    assert stored["Status"] == "failed", "the next create marks the dead creation failed on disk"
    work = [n for n in os.listdir(os.path.join(ds.repo, "tmp"))]
    assert work == [], f"abandoned work areas must be removed by the next writer: {work}"
    ds.run("delete", "killed")
    assert "killed" not in {r["SnapshotName"] for r in ds.run("list", "--json").json()}


def test_source_changing_during_read_fails_unless_allow_live(ds, tmp_path):
    image = big_random_image(tmp_path, 128)
    stop = threading.Event()

    def scribble():
        with open(image, "r+b") as f:
            while not stop.is_set():
                f.seek(0)
                f.write(os.urandom(16))
                f.flush()
                time.sleep(0.002)

    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        r = ds.run("create", image, "--name", "live", check=False)
        assert r.code == 4 and "Source.ChangedDuringRead" in r.err
        record = ds.run("list", "--json").json()[0]
        assert record["Status"] == "failed" and "changed" in record["FailureReason"]
        snap = ds.create(image, "live2", "--allow-live")
        assert ds.show(snap)["CrashConsistent"] is False
    finally:
        stop.set()
        writer.join()


def test_block_device_mounted_read_write_is_refused(ds, tmp_path):
    fs = tmp_path / "fs.img"
    with open(fs, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(fs)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with Loop(str(fs)) as dev:
        subprocess.run(["mount", dev, str(mnt)], check=True)
        try:
            r = ds.run("create", dev, "--name", "mounted", check=False)
            assert r.code == 4 and "Source.InUse" in r.err and str(mnt) in r.err
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            snap = ds.create(dev, "readonly")
            assert ds.show(snap)["Identity"]["Content"]["Type"] == "ext4"
        finally:
            subprocess.run(["umount", str(mnt)], check=True)


def test_no_progress_noise_when_not_a_terminal(ds, test_disk, tmp_path):
    r = ds.run("create", test_disk["v1"], "--name", "quiet")
    assert r.err == "" and r.out.strip().startswith("s-")
    r = ds.run("restore", "quiet", tmp_path / "q.img")
    assert r.err == ""


def test_full_disk_fails_cleanly_and_frees_its_files(tmp_path, test_disk):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(small)], check=True)
    try:
        ds = DiskSnap(str(small / "repo"))
        ds.run("init")
        image = big_random_image(tmp_path, 40)
        r = ds.run("create", image, "--name", "toobig", check=False)
        assert r.code == 7 and "IO.NoSpace" in r.err
        assert os.listdir(small / "repo" / "tmp") == []
        assert ds.run("check").code == 0
        ds.create(test_disk["v1"], "fits")  # ~4 MiB of chunks after compression
        assert ds.run("check", "--read-data").code == 0
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_incompressible_chunks_are_stored_raw_without_overhead(ds, tmp_path):
    image = big_random_image(tmp_path, 8)
    record = ds.show(ds.create(image, "random"))
    assert record["BytesStoredNew"] == 8 << 20, "zstd output larger than the chunk must not be kept"
    compressible = tmp_path / "text.img"
    compressible.write_bytes(b"disksnap compresses text well\n" * 300_000)
    text = ds.show(ds.create(compressible, "text"))
    assert text["BytesStoredNew"] < os.path.getsize(compressible) / 20


@pytest.mark.parametrize("damage", ["truncate", "garbage", "version"])
def test_damaged_config_is_a_clear_error(ds, test_disk, damage):
    ds.create(test_disk["v1"], "one")
    config = os.path.join(ds.repo, "config.json")
    text = open(config).read()
    with open(config, "w") as f:
        f.write({"truncate": text[: len(text) // 2], "garbage": "\x00\x01zz",
                 "version": text.replace('"FormatVersion" : 1', '"FormatVersion" : 99')}[damage])
    for command in (["list"], ["create", test_disk["v1"], "--name", "two"], ["check"]):
        r = ds.run(*command, check=False)
        assert r.code == 6 and "Repository.Corrupt" in r.err and "config.json" in r.err, (command, r.err)


def test_repository_files_are_private(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "private")
    ds.run("gc")
    seen = 0
    for root, dirs, files in os.walk(ds.repo):
        for d in dirs:
            mode = os.stat(os.path.join(root, d)).st_mode & 0o777
            assert mode == 0o700, f"{os.path.join(root, d)} is {oct(mode)}"
        for f in files:
            mode = os.stat(os.path.join(root, f)).st_mode & 0o777
            assert mode & 0o077 == 0, f"{os.path.join(root, f)} is {oct(mode)}"
            seen += 1
    assert seen > 5 and os.stat(ds.repo).st_mode & 0o777 == 0o700
    out = tmp_path / "restored.img"
    ds.run("restore", snap, out)
    assert os.stat(out).st_mode & 0o077 == 0, "a restored disk is readable by its owner only"


def test_names_and_ids_never_reach_outside_the_repository(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "kept")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    for ref in ("../outside", "../../outside.json", f"{snap}/../../outside", "s-../../../outside", "/etc/passwd", ""):
        for command in (["show", ref], ["delete", ref], ["restore", ref, tmp_path / "x.img"], ["diff", ref, snap],
                        ["export", ref, "--socket", tmp_path / "s.sock"], ["disk", "show", ref]):
            r = ds.run(*command, check=False)
            assert r.code in (2, 3, 64), f"{command}: {r.code} {r.err}"
    assert outside.read_text() == "{}"
    assert not (tmp_path / "x.img").exists()
    assert ds.show(snap)["SnapshotName"] == "kept"


def test_full_disk_then_delete_and_gc_make_room(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(small)], check=True)
    try:
        ds = DiskSnap(str(small / "repo"))
        first, second = tmp_path / "first.img", tmp_path / "second.img"
        for path in (first, second):
            with open(path, "wb") as f:
                f.write(os.urandom(22 << 20))
        a = ds.create(first, "first")
        r = ds.run("create", second, "--name", "second", check=False)
        assert r.code == 7 and "IO.NoSpace" in r.err
        assert os.listdir(small / "repo" / "tmp") == [], "the failed create's work area is gone"
        assert ds.run("check", "--read-data").code == 0
        listed = {s["SnapshotName"]: s["Status"] for s in ds.run("list", "--json").json()}
        assert listed == {"first": "accomplished", "second": "failed"}
        ds.run("delete", a)
        g = ds.run("gc", "--json").json()
        assert g["BytesFreed"] > 20 << 20
        b = ds.create(second, "second-again")
        out = tmp_path / "out.img"
        ds.run("restore", b, out)
        assert sha256(out) == sha256(second)
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_source_read_error_fails_the_snapshot_cleanly(tmp_path, test_disk):
    """A source that returns EIO mid-read: a disk image behind disksnap's own FUSE mount,
    served from a repository with one damaged chunk."""
    source_repo = DiskSnap(str(tmp_path / "source-repo"))
    snap = source_repo.create(test_disk["v1"], "origin")
    pack = largest_pack(source_repo.repo)
    flip_byte(pack, 5000)
    mnt = tmp_path / "mnt"
    server = subprocess.Popen([BIN, "--repo", source_repo.repo, "mount", snap, str(mnt)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline()
        ds = DiskSnap(str(tmp_path / "repo"))
        good = ds.create(test_disk["v2"], "good")
        r = ds.run("create", mnt / "disk.img", "--name", "unreadable", check=False)
        assert r.code == 7 and "IO.Error" in r.err and "Input/output error" in r.err and "offset" in r.err, r.err
        listed = {s["SnapshotName"]: s for s in ds.run("list", "--json").json()}
        assert listed["unreadable"]["Status"] == "failed" and "Input/output error" in listed["unreadable"]["FailureReason"]
        assert os.listdir(os.path.join(ds.repo, "tmp")) == []
        assert ds.run("check", "--read-data").code == 0
        out = tmp_path / "good.img"
        ds.run("restore", good, out)
        assert sha256(out) == sha256(test_disk["v2"])
        again = ds.create(test_disk["v1"], "next")
        assert ds.show(again)["Status"] == "accomplished"
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        server.wait(timeout=30)


def test_repair_rebuilds_a_lost_or_truncated_chunk_index(ds, test_disk, tmp_path):
    a = ds.create(test_disk["v1"], "first")
    b = ds.create(test_disk["v2"], "second")
    index_dir = os.path.join(ds.repo, "index")
    segments = sorted(os.listdir(index_dir))
    os.truncate(os.path.join(index_dir, segments[0]), 100)
    os.remove(os.path.join(index_dir, segments[1]))
    broken = ds.run("check", check=False)
    assert broken.code == 1 and "Repository.Corrupt" in broken.out
    r = ds.run("restore", a, tmp_path / "x.img", check=False)
    assert r.code == 6 and not (tmp_path / "x.img").exists(), "never restored from a damaged index"
    fixed = ds.run("check", "--repair", "--read-data")
    assert "index rebuilt from" in fixed.out and "snapshots marked damaged: none" in fixed.out
    assert ds.run("check", "--read-data").code == 0
    for snap, image in ((a, test_disk["v1"]), (b, test_disk["v2"])):
        out = tmp_path / f"{snap}.img"
        ds.run("restore", snap, out)
        assert sha256(out) == sha256(image)


def test_repair_marks_snapshots_that_lost_chunks_as_damaged(ds, tmp_path):
    images = []
    for i in range(2):
        path = tmp_path / f"d{i}.img"
        path.write_bytes(os.urandom(3 << 20))
        images.append(path)
    a = ds.create(images[0], "lost")
    packs_a = set(os.listdir(os.path.join(ds.repo, "packs")))
    b = ds.create(images[1], "kept")
    for name in packs_a:
        os.remove(os.path.join(ds.repo, "packs", name))
    r = ds.run("check", "--repair", check=False)
    assert r.code == 1, "the damage remains a problem after the repair"
    assert f"snapshots marked damaged: {a}" in r.out and "chunks are missing" in r.out
    assert "Snapshot.Damaged" in r.out and a in r.out
    shown = ds.show(a)
    assert shown["Status"] == "damaged" and "missing" in shown["FailureReason"]
    refused = ds.run("restore", a, tmp_path / "a.img", check=False)
    assert refused.code == 4 and "damaged" in refused.err
    out = tmp_path / "b.img"
    ds.run("restore", b, out)
    assert sha256(out) == sha256(images[1])
    assert [s["SnapshotId"] for s in ds.run("list", "--status", "damaged", "--json").json()] == [a]
    ds.run("delete", a)
    ds.run("gc")
    assert ds.run("check", "--read-data").code == 0


def test_repair_with_read_data_drops_corrupt_chunks(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "flipped")
    pack = largest_pack(ds.repo)
    flip_byte(pack, 5000)
    r = ds.run("check", "--repair", "--read-data", check=False)
    assert r.code == 1 and "chunks with bad data left out" in r.out and snap in r.out
    assert ds.show(snap)["Status"] == "damaged"


def test_damaged_gc_state_stops_writers_until_repaired(ds, test_disk, tmp_path):
    ds.create(test_disk["v1"], "first")
    gc_state = os.path.join(ds.repo, "gc.json")
    with open(gc_state, "w") as f:
        f.write('{"FormatVersion": 1, "Generation": ')
    r = ds.run("create", test_disk["v2"], "--name", "second", check=False)
    assert r.code == 6 and "Repository.Corrupt" in r.err and "gc.json" in r.err
    assert "gc.json" in ds.run("check", check=False).out
    fixed = ds.run("check", "--repair")
    assert "damaged gc.json removed" in fixed.out
    ds.create(test_disk["v2"], "second")
    assert ds.run("check", "--read-data").code == 0

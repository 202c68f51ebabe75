"""Image files on a reflink filesystem (XFS with reflink, and btrfs, on a loop device): the image is
cloned (FICLONE) and the clone read, so a writer cannot tear the snapshot or fail it."""
import json
import os
import subprocess
import time

import pytest

from conftest import DiskSnap
from test_gc import start_paused
from test_qemu import Daemon, Guest, read_all, restore_bytes


@pytest.fixture(params=["xfs", "btrfs"])
def xfs(tmp_path, request):
    """A reflink filesystem on a loop device: XFS with reflink, then btrfs (reflinks always)."""
    backing = tmp_path / f"{request.param}.img"
    with open(backing, "wb") as f:
        f.truncate(1 << 30)
    mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if request.param == "xfs" else ["mkfs.btrfs", "-q"]
    subprocess.run(mkfs + [str(backing)], check=True, capture_output=True)
    mount = tmp_path / request.param
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(backing), str(mount)], check=True, capture_output=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def clones(directory):
    return [n for n in os.listdir(directory) if n.startswith(".disksnap-clone-")]


def test_a_raw_image_being_written_is_snapshotted_at_the_instant_of_its_clone(ds, xfs, test_disk, tmp_path):
    image = xfs / "vm.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    size = os.path.getsize(image)
    guest = Guest(tmp_path, str(image), 0, size)
    try:
        # Without the clone, the writer makes the read fail (never a torn snapshot).
        r = ds.run("create", image, "--name", "torn", "--no-clone", check=False)
        assert r.code == 4 and "Source.ChangedDuringRead" in r.err
        proc, release = start_paused(ds, tmp_path, "create-after-index", "create", image, "--name", "cloned", "--json")
        # The clone is made before the index is opened: the instant is behind us; the
        # guest writes on while the pause lasts and while the clone is read.
        expected = read_all(xfs / clones(xfs)[0])
        time.sleep(0.3)
        open(release, "w").close()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    finally:
        guest.stop()
    snap = json.loads(out)["SnapshotId"]
    record = ds.show(snap)
    assert record["ConsistencyMethod"] == "reflink-clone"
    assert record["SourcePath"] == str(image)
    assert read_all(image) != expected, "the guest wrote nothing after the clone: the test proves nothing"
    assert restore_bytes(ds, snap, tmp_path) == expected
    assert clones(xfs) == []


def test_the_clone_is_the_disk_and_goes_away(ds, xfs, test_disk, tmp_path):
    image = xfs / "idle.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    snap = ds.create(image, "idle")
    assert ds.show(snap)["ConsistencyMethod"] == "reflink-clone"
    assert restore_bytes(ds, snap, tmp_path) == read_all(test_disk["v1"])
    assert clones(xfs) == []
    # --no-clone reads the image itself.
    plain = ds.create(image, "plain", "--no-clone")
    assert "ConsistencyMethod" not in ds.show(plain)


def test_a_qcow2_image_is_cloned_unless_qemu_holds_it(ds, xfs, test_disk, tmp_path):
    """An idle qcow2 image is cloned and read through its tables like any qcow2 image; one
    QEMU holds is never cloned (its metadata may be mid-update): refused without --qmp."""
    image = xfs / "vm.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", test_disk["v1"], str(image)], check=True)
    idle = ds.create(image, "idle")
    assert ds.show(idle)["ConsistencyMethod"] == "reflink-clone"
    assert restore_bytes(ds, idle, tmp_path) == read_all(test_disk["v1"])
    assert clones(xfs) == []
    d = Daemon(tmp_path, image).start()
    try:
        r = ds.run("create", image, "--name", "held", check=False)
        assert r.code == 4 and "Source.InUse" in r.err and "--qmp" in r.err, r.err
        assert clones(xfs) == []
        live = ds.run("create", image, "--name", "live", "--qmp", d.qmp_path, "--json").json()["SnapshotId"]
        assert ds.show(live)["ConsistencyMethod"] == "qemu-fleecing"
        assert restore_bytes(ds, live, tmp_path) == read_all(d.guest)
    finally:
        d.stop()
    subprocess.run(["qemu-img", "check", str(image)], check=True, capture_output=True)


def test_a_killed_runs_clone_is_removed_by_the_next(ds, xfs, test_disk, tmp_path):
    image = xfs / "vm.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", image, "--name", "killed")
    assert len(clones(xfs)) == 1
    killed = clones(xfs)
    proc.kill()
    proc.wait()
    assert clones(xfs) == killed
    # The next run removes it first, and says so.
    holder, held = start_paused(ds, tmp_path, "create-after-clone", "create", image, "--name", "holder")
    try:
        mine = [c for c in clones(xfs) if c not in killed]
        assert len(mine) == 1 and clones(xfs) == mine
        # While a live run holds its clone, another run's cleanup leaves it alone (a second
        # repository: one repository makes one snapshot of a disk at a time).
        r = DiskSnap(str(tmp_path / "repo2")).run("create", image, "--name", "next", "--json")
        assert clones(xfs) == mine
        open(held, "w").close()
        out, err = holder.communicate(timeout=120)
        assert holder.returncode == 0, err
        assert f"removed clone {xfs}/{killed[0]}, left by a disksnap run that was killed" in err
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert clones(xfs) == []
    assert restore_bytes(DiskSnap(str(tmp_path / "repo2")), r.json()["SnapshotId"], tmp_path) == read_all(image)


def test_no_clone_where_the_filesystem_cannot(ds, test_disk, tmp_path):
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(tmpfs)], check=True)
    try:
        image = tmpfs / "vm.img"
        subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
        snap = ds.create(image, "plain")
        assert "ConsistencyMethod" not in ds.show(snap)
        assert clones(tmpfs) == []
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)


def kept(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith(".disksnap-kept-"))


def test_a_kept_clone_tells_the_next_snapshot_exactly_what_was_written(ds, xfs, tmp_path):
    image = xfs / "raw.img"
    size = 48 << 20
    with open(image, "wb") as f:
        f.write(os.urandom(size))
    first = ds.create(image, "first", "--keep-clone")
    r1 = ds.show(first)
    chunk = r1["ChunkSize"]
    assert r1["ChangeTracking"]["Method"] == "reflink-extents"
    assert "no previous snapshot" in r1["ChangeTracking"]["FullReadReason"]
    assert r1["BytesRead"] == size
    assert kept(xfs) and r1["KeptClone"]["Path"] == str(xfs / kept(xfs)[0])
    # A writer changes 4 KiB in three chunks (two writes share one chunk) and 64 KiB across
    # a chunk boundary.
    writes = [(3 * chunk + 512, 4096), (3 * chunk + 8192, 100), (500 * chunk, 4096), (700 * chunk - 4096, 65536)]
    fd = os.open(image, os.O_WRONLY)
    for offset, length in writes:
        os.pwrite(fd, os.urandom(length), offset)
    os.fsync(fd)
    os.close(fd)
    touched = set()
    for offset, length in writes:
        touched.update(range(offset // chunk, (offset + length - 1) // chunk + 1))
    second = ds.create(image, "second", "--keep-clone")
    r2 = ds.show(second)
    assert r2["ChangeTracking"]["BaseSnapshotId"] == first
    assert r2["BytesRead"] == len(touched) * chunk, (r2["BytesRead"], sorted(touched))
    assert restore_bytes(ds, second, tmp_path) == read_all(image)
    # The previous snapshot's clone is gone, this one's is kept, and show says what it holds.
    assert kept(xfs) == [os.path.basename(r2["KeptClone"]["Path"])]
    out = ds.run("show", second).out
    assert "KeptClone" in out and "holds 0 bytes" in out
    def rewrite(length):
        with open(image, "r+b") as f:
            f.write(os.urandom(length))
            f.flush()
            os.fsync(f.fileno())
        return int(ds.run("show", second).out.split("holds ")[1].split(" bytes")[0])
    # What it holds is counted in whole extents (FIEMAP's shared flag): XFS tells the
    # megabyte rewritten, btrfs keeps an extent shared while the image still references any
    # part of it (it frees no part of it before then either).
    held = rewrite(1 << 20)
    assert held == 1 << 20 if xfs.name == "xfs" else held <= 1 << 20, held
    assert rewrite(size) == size, "the image rewritten whole: every byte of the clone is its own"

    # A kept clone someone wrote to is not trusted: a full read, and the snapshot is right.
    with open(r2["KeptClone"]["Path"], "r+b") as f:
        f.seek(100 * chunk)
        f.write(b"x")
    third = ds.create(image, "third", "--keep-clone")
    r3 = ds.show(third)
    assert "changed or replaced" in r3["ChangeTracking"]["FullReadReason"]
    assert r3["BytesRead"] == size
    assert restore_bytes(ds, third, tmp_path) == read_all(image)
    # Deleting the snapshot removes its clone; a clone no snapshot uses is removed by the next create.
    ds.run("delete", third)
    assert kept(xfs) == []
    orphan = xfs / (os.path.basename(r3["KeptClone"]["Path"]))
    subprocess.run(["cp", "--reflink=always", image, orphan], check=True)
    fourth = ds.create(image, "fourth")
    assert str(orphan) not in str(kept(xfs)) and kept(xfs) == []
    assert "ChangeTracking" not in ds.show(fourth)


def test_keep_clone_where_no_clone_can_be_made_warns_and_reads_everything(ds, test_disk, tmp_path):
    image = tmp_path / "plain.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    r = ds.run("create", image, "--name", "tmpfs", "--keep-clone", "--json")
    assert r.code == 0 and "--keep-clone: no reflink clone could be made" in r.err
    assert "KeptClone" not in ds.show(json.loads(r.out)["SnapshotId"])
    r = ds.run("create", image, "--name", "both", "--keep-clone", "--no-clone", check=False)
    assert r.code == 2 and "InvalidParameter.Clone" in r.err

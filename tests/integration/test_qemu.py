"""Running VMs: snapshots of a disk a real QEMU block layer (qemu-storage-daemon) has open and
writes, through its point-in-time view, and incrementals through its dirty bitmaps.

The "guest" writes to the disk through the daemon's FUSE export, so every write goes through
QEMU's block layer (and its copy-before-write) as a VM's would.
"""
import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import BIN, CHUNK, DiskSnap, Loop, sha256
from test_gc import start_paused

MIB = 1 << 20


def qemu_img(*args):
    return subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True, text=True).stdout


class QMP:
    """A minimal QMP client for the tests' own look at QEMU (not disksnap's code)."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.file = self.sock.makefile("rw")
        json.loads(self.file.readline())
        self.execute("qmp_capabilities")

    def execute(self, name, **args):
        self.file.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "event" in reply:
                continue
            if "error" in reply:
                raise RuntimeError(f"{name}: {reply['error']['desc']}")
            return reply["return"]

    def close(self):
        # The file made of the socket holds it open too.
        self.file.close()
        self.sock.close()


class Daemon:
    """qemu-storage-daemon with IMAGE open as node `disk0`, exported writable through FUSE at
    `guest` (the guest's view of its disk), a QMP socket for disksnap and a second one for the
    tests' own look (a QMP monitor serves one connection at a time)."""

    def __init__(self, tmp_path, image, fmt="qcow2", read_only=False, name="qsd", protocol="file"):
        self.dir = tmp_path / name
        self.dir.mkdir(exist_ok=True)
        self.image = str(image)
        self.fmt = fmt
        self.protocol = protocol  # host_device for a block device
        self.read_only = read_only
        self.qmp_path = str(self.dir / "qmp.sock")
        self.look_path = str(self.dir / "look.sock")
        self.guest = str(self.dir / "guest.raw")
        self.proc = None

    def start(self):
        open(self.guest, "a").close()
        ro = ",read-only=on" if self.read_only else ""
        argv = ["qemu-storage-daemon",
                "--blockdev", f"driver={self.protocol},node-name=file0,filename={self.image}{ro}",
                "--blockdev", f"driver={self.fmt},node-name=disk0,file=file0{ro}",
                "--export", f"type=fuse,id=guest0,node-name=disk0,mountpoint={self.guest},writable={'off' if self.read_only else 'on'}",
                "--chardev", f"socket,path={self.qmp_path},server=on,wait=off,id=mon0",
                "--monitor", "chardev=mon0",
                "--chardev", f"socket,path={self.look_path},server=on,wait=off,id=mon1",
                "--monitor", "chardev=mon1"]
        self.log = open(self.dir / "qsd.log", "a")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, open(self.dir / "qsd.log").read()
            try:
                self.qmp().close()
                if os.path.getsize(self.guest) > 0:
                    return self
            except OSError:
                pass
            assert time.monotonic() < deadline, "qemu-storage-daemon did not start"
            time.sleep(0.05)

    def qmp(self):
        return QMP(self.look_path)

    def command(self, name, **args):
        q = self.qmp()
        try:
            return q.execute(name, **args)
        finally:
            q.close()

    def node(self, name="disk0"):
        return next(n for n in self.command("query-named-block-nodes", flat=True) if n["node-name"] == name)

    def bitmaps(self):
        # A backup job's own bitmap has no name.
        return {b["name"]: b for b in self.node().get("dirty-bitmaps", []) if "name" in b}

    def ours(self):
        """Every disksnap-made object still in QEMU."""
        nodes = [n["node-name"] for n in self.command("query-named-block-nodes", flat=True) if n["node-name"].startswith("disksnap-")]
        exports = [e["id"] for e in self.command("query-block-exports") if e["id"].startswith("disksnap-")]
        jobs = [j["id"] for j in self.command("query-jobs") if j["id"].startswith("disksnap-")]
        return nodes + exports + jobs

    def stop(self):
        """A clean exit: persistent bitmaps are written into the image."""
        try:
            self.command("quit")
        except (OSError, RuntimeError, json.JSONDecodeError):
            pass
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-q", self.guest])

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", "-q", self.guest])


class Guest:
    """A writer in another process, writing random blocks into the guest disk as fast as it
    can (each write reaches QEMU before the next starts). `pause()` returns once it has
    stopped between writes; `resume()` lets it go on."""

    SCRIPT = r"""
import os, random, sys, time
path, control, start, end, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed)
fd = os.open(path, os.O_WRONLY)
count = 0
while not os.path.exists(control + ".stop"):
    if os.path.exists(control + ".pause"):
        open(control + ".paused", "w").close()
        while os.path.exists(control + ".pause"):
            time.sleep(0.005)
        os.unlink(control + ".paused")
    size = rng.choice([4096, 65536])
    offset = rng.randrange(start, end - size) // 4096 * 4096
    os.pwrite(fd, rng.randbytes(size), offset)
    os.fsync(fd)
    count += 1
    open(control + ".count", "w").write(str(count))
"""

    def __init__(self, tmp_path, path, start, end, seed=1):
        self.control = str(tmp_path / "guest-control")
        self.proc = subprocess.Popen([sys.executable, "-c", self.SCRIPT, path, self.control, str(start), str(end), str(seed)])

    def writes(self):
        try:
            return int(open(self.control + ".count").read() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def pause(self):
        open(self.control + ".pause", "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(self.control + ".paused"):
            assert self.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)

    def resume(self):
        os.unlink(self.control + ".pause")

    def stop(self):
        open(self.control + ".stop", "w").close()
        if os.path.exists(self.control + ".pause"):
            os.unlink(self.control + ".pause")
        self.proc.wait(timeout=30)


def write_blocks(path, blocks, seed):
    """Writes random bytes at (offset, size) pairs, the way a guest would; returns them."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, size in blocks:
            os.pwrite(fd, rng.randbytes(size), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def chunks_touched(blocks):
    return {c for offset, size in blocks for c in range(offset // CHUNK, (offset + size - 1) // CHUNK + 1)}


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def vm_image(tmp_path, test_disk):
    """A qcow2 image of the GPT + ext4 test disk."""
    image = tmp_path / "vm.qcow2"
    qemu_img("convert", "-O", "qcow2", test_disk["v1"], image)
    return image


@pytest.fixture
def daemon(tmp_path, vm_image):
    d = Daemon(tmp_path, vm_image).start()
    yield d
    if d.proc.poll() is None:
        d.stop()
    # Whatever each test did, QEMU left the image consistent.
    subprocess.run(["qemu-img", "check", str(vm_image)], check=True, capture_output=True)


def create_live(ds, daemon, name, *extra, check=True):
    return ds.run("create", daemon.image, "--name", name, "--qmp", daemon.qmp_path, "--json", *extra, check=check)


def restore_bytes(ds, snap, tmp_path):
    out = tmp_path / f"restored-{snap}.raw"
    if out.exists():
        out.unlink()
    ds.run("restore", snap, out)
    return read_all(out)


def test_a_snapshot_of_a_running_disk_is_the_disk_at_the_instant_of_the_view(ds, daemon, test_disk, tmp_path):
    size = os.path.getsize(daemon.guest)
    guest = Guest(tmp_path, daemon.guest, 0, size)
    proc, release = start_paused(ds, tmp_path, "qemu-before-view", "create", daemon.image, "--name", "live", "--qmp", daemon.qmp_path, "--json")
    # The instant: the guest is stopped between writes, its disk copied as it sees it.
    guest.pause()
    expected = read_all(daemon.guest)
    at_instant = guest.writes()
    open(release, "w").close()
    # The view is made (the transaction) while the guest waits; then the guest writes
    # as fast as it can for the whole read.
    deadline = time.monotonic() + 60
    while not any(b.startswith("disksnap-") for b in daemon.bitmaps()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    guest.resume()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    guest.stop()
    assert guest.writes() > at_instant, "the guest wrote nothing during the snapshot: the test proves nothing"
    snap = json.loads(out)["SnapshotId"]
    assert read_all(daemon.guest) != expected
    assert restore_bytes(ds, snap, tmp_path) == expected
    record = ds.show(snap)
    assert record["ConsistencyMethod"] == "qemu-fleecing"
    assert record["ChangeTracking"]["Node"] == "disk0"
    assert "no earlier" in record["ChangeTracking"]["FullReadReason"]
    assert daemon.ours() == []
    assert list(daemon.bitmaps()) == [record["ChangeTracking"]["Bitmap"]]


def test_an_incremental_reads_only_what_the_guest_wrote(ds, daemon, tmp_path, test_disk):
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    r1 = ds.show(first)
    assert r1["BytesRead"] > 0
    size = os.path.getsize(daemon.guest)
    rng = random.Random(7)
    blocks = [(rng.randrange(0, size - 65536) // 512 * 512, rng.choice([512, 4096, 65536, 100000])) for _ in range(40)]
    blocks.append((size - 4096, 4096))  # the last chunk
    write_blocks(daemon.guest, blocks, seed=8)
    second = json.loads(create_live(ds, daemon, "second").out)["SnapshotId"]
    r2 = ds.show(second)
    touched = chunks_touched(blocks)
    assert r2["ChangeTracking"]["BaseSnapshotId"] == first
    assert "FullReadReason" not in r2["ChangeTracking"]
    # Exactly the chunks the guest touched are read (the bitmap's granularity is the chunk).
    assert r2["BytesRead"] == len(touched) * CHUNK
    assert r2["ChunksUnchanged"] > 0
    assert f"incremental from {first}" in ds.run("show", second).out
    assert restore_bytes(ds, second, tmp_path) == read_all(daemon.guest)
    assert restore_bytes(ds, first, tmp_path) == read_all(test_disk["v1"])
    # The first snapshot's bitmap went when the second was committed; nothing else is left.
    assert list(daemon.bitmaps()) == [r2["ChangeTracking"]["Bitmap"]]
    assert daemon.ours() == []

    # A clean QEMU exit stores the bitmap in the image: after a restart, still incremental.
    daemon.stop()
    info = json.loads(qemu_img("info", "--output=json", daemon.image))
    stored = [b["name"] for b in info["format-specific"]["data"].get("bitmaps", [])]
    assert stored == [r2["ChangeTracking"]["Bitmap"]]
    daemon.start()
    more = [(4 * MIB, 4096), (9 * MIB + 100, 300)]
    write_blocks(daemon.guest, more, seed=9)
    third = json.loads(create_live(ds, daemon, "third").out)["SnapshotId"]
    r3 = ds.show(third)
    assert r3["ChangeTracking"]["BaseSnapshotId"] == second
    assert r3["BytesRead"] == len(chunks_touched(more)) * CHUNK
    assert restore_bytes(ds, third, tmp_path) == read_all(daemon.guest)
    ds.run("check", "--read-data")


def test_a_restored_running_disk_passes_e2fsck(ds, daemon, test_disk, tmp_path):
    from conftest import e2fsck_partition
    snap = json.loads(create_live(ds, daemon, "fs").out)["SnapshotId"]
    # The identity is probed through the view (libblkid on the guest's GPT and ext4).
    identity = ds.show(snap)["Identity"]
    assert identity["Size"] == os.path.getsize(daemon.guest) and len(identity["Partitions"]) == 1, identity
    assert "ext4" in json.dumps(identity)
    out = tmp_path / "fs.raw"
    ds.run("restore", snap, out)
    e2fsck_partition(str(out), test_disk["partition_offset"], test_disk["partition_size"])


def test_after_qemu_is_killed_the_next_snapshot_reads_everything_and_says_why(ds, daemon, tmp_path):
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    write_blocks(daemon.guest, [(2 * MIB, 4096)], seed=1)
    # Killed before it ever closed the image: the bitmap made at runtime was never stored.
    daemon.kill()
    daemon.start()
    assert daemon.bitmaps() == {}
    second = json.loads(create_live(ds, daemon, "second").out)["SnapshotId"]
    r2 = ds.show(second)
    assert "is not in the image" in r2["ChangeTracking"]["FullReadReason"]
    assert "BaseSnapshotId" not in r2["ChangeTracking"]
    assert r2["BytesRead"] > 8 * MIB
    assert restore_bytes(ds, second, tmp_path) == read_all(daemon.guest)

    # Stored by a clean exit, loaded again, then QEMU is killed: the bitmap is inconsistent.
    daemon.stop()
    daemon.start()
    bitmap = r2["ChangeTracking"]["Bitmap"]
    assert daemon.bitmaps()[bitmap].get("inconsistent") is not True
    daemon.kill()
    daemon.start()
    assert daemon.bitmaps()[bitmap].get("inconsistent") is True
    write_blocks(daemon.guest, [(3 * MIB, 4096)], seed=2)
    third = json.loads(create_live(ds, daemon, "third").out)["SnapshotId"]
    r3 = ds.show(third)
    assert "inconsistent" in r3["ChangeTracking"]["FullReadReason"]
    assert r3["BytesRead"] > 8 * MIB
    assert restore_bytes(ds, third, tmp_path) == read_all(daemon.guest)
    # The inconsistent bitmap was removed; only the new one is left.
    assert list(daemon.bitmaps()) == [r3["ChangeTracking"]["Bitmap"]]
    assert first != second


def test_an_incremental_of_a_disk_the_guest_replaced_fails_before_it_commits(ds, daemon, tmp_path):
    # An incremental's identity probe runs beside its reads: its verdict must still stop
    # the snapshot before the record commits, and leave the base bitmap for the next run.
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    base_bitmap = ds.show(first)["ChangeTracking"]["Bitmap"]
    write_blocks(daemon.guest, [(6 * MIB, 65536)], seed=3)
    subprocess.run(["sfdisk", "-q", "--disk-id", str(daemon.guest), "5D7A64D1-1E0B-4C4B-9F61-0B6C2A2B9E11"], check=True, capture_output=True)
    r = create_live(ds, daemon, "replaced", check=False)
    assert r.code == 4 and "DiskId.ValueNotSupported" in r.err and "partition table UUID" in r.err, r.err
    listed = {s["SnapshotName"]: s for s in ds.run("list", "--json").json()}
    assert listed["replaced"]["Status"] == "failed" and listed["first"]["Status"] == "accomplished"
    assert base_bitmap in daemon.bitmaps() and len(daemon.bitmaps()) == 1 and daemon.ours() == []
    # --force takes it, still incremental from the first snapshot, and says the disk changed.
    forced = json.loads(create_live(ds, daemon, "forced", "--force").out)["SnapshotId"]
    rf = ds.show(forced)
    assert rf["ChangeTracking"]["BaseSnapshotId"] == first
    assert "partition table UUID" in rf["IdentityChange"]
    assert "5d7a64d1-1e0b-4c4b-9f61-0b6c2a2b9e11" in json.dumps(rf["Identity"]).lower()
    assert restore_bytes(ds, forced, tmp_path) == read_all(daemon.guest)


def test_an_incremental_whose_base_index_is_damaged_reads_all_the_data_through_the_view(ds, daemon, tmp_path):
    """The bitmap is there, but the base's fixed index does not verify: a full read, still of
    the view and still skipping what QEMU reports as holes (asked only now: an incremental
    never needs it)."""
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    r1 = ds.show(first)
    size = os.path.getsize(daemon.guest)
    assert 0 < r1["BytesRead"] < size
    index = os.path.join(ds.repo, "fixed", f"{first}.fidx")
    with open(index, "r+b") as f:
        f.seek(os.path.getsize(index) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    write_blocks(daemon.guest, [(5 * MIB, 4096)], seed=3)
    # The identity probe of an incremental runs beside the pipeline. Held inside its first
    # read, it keeps the connection that asked for base:allocation while the full read's
    # block status is asked (that once failed: "did not negotiate any metadata contexts").
    held = tmp_path / "probe-read"
    proc, release = start_paused(ds, tmp_path, "create-full-read", "create", daemon.image, "--name", "second",
                                 "--qmp", daemon.qmp_path, "--json", also=f"view-read:{held}")
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(f"{held}.reached") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        probe_held = os.path.exists(f"{held}.reached")
        release.touch()
        time.sleep(1)
        failed_early = proc.poll() is not None
    finally:
        release.touch()
        held.touch()
    out, err = proc.communicate(timeout=120)
    assert probe_held, err
    assert not failed_early, f"the full read failed while the probe held a connection: {out} {err}"
    assert proc.returncode == 0, err
    second = json.loads(out)["SnapshotId"]
    r2 = ds.show(second)
    assert "does not verify" in r2["ChangeTracking"]["FullReadReason"]
    assert "BaseSnapshotId" not in r2["ChangeTracking"]
    assert r1["BytesRead"] <= r2["BytesRead"] <= r1["BytesRead"] + CHUNK
    assert restore_bytes(ds, second, tmp_path) == read_all(daemon.guest)
    # The bitmap this one began is the next one's base.
    write_blocks(daemon.guest, [(6 * MIB, 4096)], seed=4)
    third = json.loads(create_live(ds, daemon, "third").out)["SnapshotId"]
    r3 = ds.show(third)
    assert r3["ChangeTracking"]["BaseSnapshotId"] == second
    assert r3["BytesRead"] == CHUNK
    assert restore_bytes(ds, third, tmp_path) == read_all(daemon.guest)


def qemu_ends_mid_snapshot(ds, daemon, tmp_path, end):
    """A first snapshot, a guest write, then a second snapshot held after its view is made
    while `end(daemon)` ends QEMU: the second fails (a failed record, the repository
    intact); QEMU is started again. Returns the first snapshot's id."""
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    # Something to read (with nothing changed, an incremental reads nothing and completes).
    write_blocks(daemon.guest, [(6 * MIB, 65536)], seed=5)
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", daemon.image, "--name", "doomed",
                                 "--qmp", daemon.qmp_path)
    end(daemon)
    open(release, "w").close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and ("Source.ReadFailed" in err or "Qemu.Gone" in err), err
    assert {s["SnapshotName"]: s["Status"] for s in ds.run("list", "--json").json()}["doomed"] == "failed"
    ds.run("check", "--read-data")
    subprocess.run(["qemu-img", "check", daemon.image], check=True, capture_output=True)
    daemon.start()
    return first


def test_qemu_killed_mid_snapshot_fails_it_cleanly(ds, daemon, tmp_path):
    first = qemu_ends_mid_snapshot(ds, daemon, tmp_path, Daemon.kill)
    second = json.loads(create_live(ds, daemon, "after").out)["SnapshotId"]
    r = ds.show(second)
    assert "FullReadReason" in r["ChangeTracking"]
    assert restore_bytes(ds, second, tmp_path) == read_all(daemon.guest)
    assert restore_bytes(ds, first, tmp_path) != restore_bytes(ds, second, tmp_path)


def test_qemu_quitting_mid_snapshot_fails_it_and_its_bitmaps_still_serve(ds, daemon, tmp_path):
    """A clean exit (the VM shut down) while the view is read: the snapshot fails, and QEMU
    wrote its bitmaps into the image, so after a restart the base bitmap still says what
    changed since the last good snapshot, and the failed run's own bitmaps are removed."""
    first = qemu_ends_mid_snapshot(ds, daemon, tmp_path, Daemon.stop)
    write_blocks(daemon.guest, [(9 * MIB, 4096)], seed=7)
    r = ds.show(json.loads(create_live(ds, daemon, "after").out)["SnapshotId"])
    assert r["ChangeTracking"]["BaseSnapshotId"] == first, r["ChangeTracking"]
    assert r["BytesRead"] == len(chunks_touched([(6 * MIB, 65536), (9 * MIB, 4096)])) * CHUNK
    assert restore_bytes(ds, r["SnapshotId"], tmp_path) == read_all(daemon.guest)
    assert list(daemon.bitmaps()) == [r["ChangeTracking"]["Bitmap"]]


def test_a_killed_disksnap_leaves_nothing_the_next_run_does_not_remove(ds, daemon, tmp_path):
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    base_bitmap = ds.show(first)["ChangeTracking"]["Bitmap"]
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", daemon.image, "--name", "killed",
                                 "--qmp", daemon.qmp_path)
    left = daemon.ours()
    assert any(n.startswith("disksnap-o-") for n in left) and any(n.startswith("disksnap-e-") for n in left), left
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(daemon.bitmaps()) == 3  # the base, the killed run's new one and its frozen copy
    fleece = lambda: glob.glob(os.path.join(ds.repo, "**", "disksnap-fleece-*.qcow2"), recursive=True)
    assert len(fleece()) == 1, "the killed run's overlay file"
    write_blocks(daemon.guest, [(5 * MIB, 65536)], seed=3)
    result = create_live(ds, daemon, "next")
    assert "in QEMU, left by a disksnap run that was killed" in result.err
    snap = result.json()["SnapshotId"]
    r = ds.show(snap)
    # The base bitmap still says what changed since `first`: the run is incremental.
    assert r["ChangeTracking"]["BaseSnapshotId"] == first
    assert r["BytesRead"] == len(chunks_touched([(5 * MIB, 65536)])) * CHUNK
    assert restore_bytes(ds, snap, tmp_path) == read_all(daemon.guest)
    assert daemon.ours() == []
    assert fleece() == []
    assert list(daemon.bitmaps()) == [r["ChangeTracking"]["Bitmap"]]
    assert base_bitmap not in daemon.bitmaps()


def test_deleting_the_latest_snapshot_removes_its_bitmap_from_the_running_qemu(ds, daemon, tmp_path):
    json.loads(create_live(ds, daemon, "snap-a").out)
    b = json.loads(create_live(ds, daemon, "snap-b").out)["SnapshotId"]
    tracking = ds.show(b)["ChangeTracking"]
    b_bitmap = tracking["Bitmap"]
    assert tracking["QmpSocket"] == os.path.abspath(daemon.qmp_path)
    assert b_bitmap in daemon.bitmaps()
    ds.run("delete", b)
    assert b_bitmap not in daemon.bitmaps(), "no snapshot can be incremental from a deleted one"
    c = json.loads(create_live(ds, daemon, "snap-c").out)["SnapshotId"]
    r = ds.show(c)
    # a's bitmap went when b was committed: with b deleted, nothing says what changed since a.
    assert "not in the image" in r["ChangeTracking"]["FullReadReason"]
    assert list(daemon.bitmaps()) == [r["ChangeTracking"]["Bitmap"]]
    # With QEMU gone the snapshot is deleted all the same; its bitmap, written into the
    # image at QEMU's clean exit, goes at the next view of the disk.
    daemon.stop()
    ds.run("delete", c)
    d = Daemon(tmp_path, daemon.image, name="again").start()
    try:
        assert r["ChangeTracking"]["Bitmap"] in d.bitmaps()
        e = json.loads(create_live(ds, d, "snap-e").out)["SnapshotId"]
        e_bitmap = ds.show(e)["ChangeTracking"]["Bitmap"]
        assert list(d.bitmaps()) == [e_bitmap]
        # Another client holds disksnap's monitor: delete does not wait for it (a few
        # seconds at most) and leaves the bitmap to the next view.
        other = QMP(d.qmp_path)
        try:
            ds.run("delete", e)
        finally:
            other.close()
        assert list(d.bitmaps()) == [e_bitmap]
        f = json.loads(create_live(ds, d, "snap-f").out)["SnapshotId"]
        assert list(d.bitmaps()) == [ds.show(f)["ChangeTracking"]["Bitmap"]]
    finally:
        d.stop()


def test_an_image_qemu_opened_read_only(ds, tmp_path, vm_image, test_disk):
    d = Daemon(tmp_path, vm_image, read_only=True).start()
    try:
        snap = json.loads(create_live(ds, d, "ro").out)["SnapshotId"]
        r = ds.show(snap)
        assert r["ConsistencyMethod"] == "qemu-read-only"
        assert "read-only" in r["ChangeTracking"]["FullReadReason"]
        assert "Bitmap" not in r["ChangeTracking"]
        assert restore_bytes(ds, snap, tmp_path) == read_all(test_disk["v1"])
        assert d.ours() == [] and d.bitmaps() == {}
    finally:
        d.stop()


def test_without_qmp_a_disk_qemu_holds_is_still_refused(ds, daemon):
    r = ds.run("create", daemon.image, "--name", "torn", check=False)
    assert r.code == 4 and "Source.InUse" in r.err and "--qmp" in r.err


def test_a_raw_image_through_qemu(ds, tmp_path, test_disk):
    image = tmp_path / "raw.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    d = Daemon(tmp_path, image, fmt="raw", name="raw").start()
    try:
        # Without --qmp and without a clone to read, a raw image QEMU writes is refused
        # before a byte is read; --allow-live reads it and says it may be torn.
        r = ds.run("create", image, "--name", "torn", "--no-clone", check=False)
        assert r.code == 4 and "Source.InUse" in r.err and "QEMU's image lock" in r.err and "--qmp" in r.err, r.err
        torn = ds.run("create", image, "--name", "torn", "--no-clone", "--allow-live", "--json").json()["SnapshotId"]
        assert ds.show(torn)["CrashConsistent"] is False
        first = json.loads(create_live(ds, d, "r1").out)["SnapshotId"]
        write_blocks(d.guest, [(7 * MIB, 4096)], seed=4)
        second = json.loads(create_live(ds, d, "r2").out)["SnapshotId"]
        r = ds.show(second)
        assert r["ChangeTracking"]["BaseSnapshotId"] == first and r["BytesRead"] == CHUNK
        assert restore_bytes(ds, second, tmp_path) == read_all(d.guest)
    finally:
        d.stop()


def test_a_block_device_qemu_writes_is_refused_without_qmp(ds, tmp_path, test_disk):
    """A VM's disk on a host block device (QEMU's host_device driver on a loop device): its
    write lock refuses a plain read; through --qmp it is snapshotted at one instant."""
    image = tmp_path / "dev.img"
    subprocess.run(["cp", "--sparse=always", test_disk["v1"], image], check=True)
    with Loop(str(image)) as device:
        d = Daemon(tmp_path, device, fmt="raw", name="dev", protocol="host_device").start()
        try:
            r = ds.run("create", device, "--name", "torn", check=False)
            assert r.code == 4 and "Source.InUse" in r.err and "QEMU's image lock" in r.err, r.err
            assert "reflinks" not in r.err, "a device is never cloned"
            snap = json.loads(create_live(ds, d, "dev1").out)["SnapshotId"]
            assert ds.show(snap)["ConsistencyMethod"] == "qemu-fleecing"
            assert restore_bytes(ds, snap, tmp_path) == read_all(d.guest)
        finally:
            d.stop()
    # QEMU gone, the device is free again.
    with Loop(str(image)) as device:
        ds.run("create", device, "--name", "idle")


def test_an_nbd_server_qemu_already_runs(ds, daemon, tmp_path):
    theirs = str(tmp_path / "their-nbd.sock")
    daemon.command("nbd-server-start", addr={"type": "unix", "data": {"path": theirs}})
    r = create_live(ds, daemon, "busy", check=False)
    assert r.code == 5 and "Qemu.NbdServerInUse" in r.err and "--nbd-socket" in r.err
    snap = json.loads(create_live(ds, daemon, "shared", "--nbd-socket", theirs).out)["SnapshotId"]
    assert restore_bytes(ds, snap, tmp_path) == read_all(daemon.guest)
    # Their server still runs: a second start is refused.
    with pytest.raises(RuntimeError, match="already running"):
        daemon.command("nbd-server-start", addr={"type": "unix", "data": {"path": theirs + "2"}})
    assert daemon.ours() == []


def test_a_node_that_is_not_the_image(ds, daemon, tmp_path, vm_image):
    other = tmp_path / "other.qcow2"
    qemu_img("create", "-f", "qcow2", other, "16M")
    daemon.command("blockdev-add", driver="qcow2", **{"node-name": "other0"}, file={"driver": "file", "filename": str(other)})
    r = ds.run("create", vm_image, "--name", "xq", "--qmp", daemon.qmp_path, "--node", "other0", check=False)
    assert r.code == 3 and "Qemu.NodeNotFound" in r.err and "not" in r.err
    r = ds.run("create", vm_image, "--name", "xq", "--qmp", daemon.qmp_path, "--node", "nosuch", check=False)
    assert r.code == 3 and "Qemu.NodeNotFound" in r.err
    # An image this QEMU does not have open.
    lone = tmp_path / "lone.qcow2"
    qemu_img("create", "-f", "qcow2", lone, "16M")
    r = ds.run("create", lone, "--name", "yq", "--qmp", daemon.qmp_path, check=False)
    assert r.code == 3 and "Qemu.NodeNotFound" in r.err
    # The right node by name works.
    snap = json.loads(create_live(ds, daemon, "named", "--node", "disk0").out)["SnapshotId"]
    assert restore_bytes(ds, snap, tmp_path) == read_all(daemon.guest)
    daemon.command("blockdev-del", **{"node-name": "other0"})


def fake_server(path, behaviour):
    """A Unix socket server that is not (or is an old) QMP, in a thread."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(4)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            # Binary: a text file over the socket drops the lines it has read ahead when it
            # writes, and disksnap sends several commands in one write.
            f = conn.makefile("rwb")
            try:
                behaviour(f)
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    return server


def test_sockets_that_are_not_a_usable_qmp(ds, tmp_path, vm_image):
    cases = []
    chatty = str(tmp_path / "chatty.sock")
    cases.append((fake_server(chatty, lambda f: (f.write(b"hello, I am not QEMU\n"), f.flush())), chatty, 2, "Qemu.NotQmp"))

    silent = str(tmp_path / "silent.sock")
    cases.append((fake_server(silent, lambda f: time.sleep(8)), silent, 2, "Qemu.NotQmp"))

    def old_qemu(f):
        f.write(json.dumps({"QMP": {"version": {"qemu": {"major": 4, "minor": 2, "micro": 0}, "package": ""}, "capabilities": []}}).encode() + b"\n")
        f.flush()
        while line := f.readline():
            req = json.loads(line)
            ret = [{"name": n} for n in ["qmp_capabilities", "query-commands", "transaction", "blockdev-add", "blockdev-backup"]] \
                if req["execute"] == "query-commands" else {}
            f.write(json.dumps({"return": ret, "id": req.get("id")}).encode() + b"\n")
            f.flush()
    old = str(tmp_path / "old.sock")
    cases.append((fake_server(old, old_qemu), old, 2, "Qemu.Unsupported"))

    for server, path, code, error in cases:
        r = ds.run("create", vm_image, "--name", "nq", "--qmp", path, check=False)
        assert r.code == code and error in r.err, (path, r.code, r.err)
        if path == old:
            assert "QEMU 4.2.0" in r.err and "5.2 or later" in r.err and "block-export-add" in r.err
        server.close()
    r = ds.run("create", vm_image, "--name", "nq", "--qmp", str(tmp_path / "missing.sock"), check=False)
    assert r.code == 3 and "Qemu.Unreachable" in r.err
    r = ds.run("create", vm_image, "--name", "nq", "--qmp", str(vm_image), check=False)
    assert r.code == 3 and "Qemu.Unreachable" in r.err
    # Nothing was stored; every failed attempt is on record as failed.
    listed = ds.run("list", "--json").json()
    assert listed and all(s["Status"] == "failed" for s in listed)


def test_an_incremental_while_gc_has_condemned_packs_rereads_what_they_hold(ds, daemon, tmp_path):
    """Chunks carried from the previous snapshot may live only in packs a gc has condemned:
    they are read again, not relied on (docs/DESIGN.md, "Garbage collection")."""
    first = json.loads(create_live(ds, daemon, "first").out)["SnapshotId"]
    # The guest rewrites most of its data: `first`'s packs end up mostly dead.
    rewrite = [(offset, 65536) for offset in range(1 * MIB, 28 * MIB, 65536)]
    write_blocks(daemon.guest, rewrite, seed=11)
    second = json.loads(create_live(ds, daemon, "second").out)["SnapshotId"]
    ds.run("delete", first)
    other = tmp_path / "other.img"
    with open(other, "wb") as f:
        f.write(os.urandom(1 << 20))
    holder, release = start_paused(ds, tmp_path, "create-after-index", "create", other, "--name", "holder")
    g = ds.run("gc", "--json").json()
    assert g["PacksCondemned"] >= 1 and g["PacksRemoved"] == 0
    changed = [(40 * MIB, 4096)]
    write_blocks(daemon.guest, changed, seed=12)
    third = json.loads(create_live(ds, daemon, "third").out)["SnapshotId"]
    r3 = ds.show(third)
    assert r3["ChangeTracking"]["BaseSnapshotId"] == second
    assert r3["ChangeTracking"]["ChangedBytes"] == CHUNK  # the bitmap's granularity is the chunk
    # More than the one changed chunk was read: the carried chunks of condemned packs.
    assert r3["BytesRead"] > CHUNK
    release.touch()
    assert holder.wait(timeout=120) == 0
    final = ds.run("gc", "--json").json()
    assert final["PacksRemoved"] >= g["PacksCondemned"]
    assert ds.run("check", "--read-data", "--json").json()["Problems"] == []
    assert restore_bytes(ds, third, tmp_path) == read_all(daemon.guest)


def test_one_view_per_qemu_at_a_time(ds, daemon, tmp_path):
    """A second disksnap on the same QEMU (through its other monitor) while a view exists is
    refused, and nothing of the first run is disturbed."""
    proc, release = start_paused(ds, tmp_path, "create-after-index", "create", daemon.image, "--name", "first",
                                 "--qmp", daemon.qmp_path, "--json")
    try:
        other = DiskSnap(str(tmp_path / "repo2"))
        r = other.run("create", daemon.image, "--name", "second", "--qmp", daemon.look_path, check=False)
        assert r.code == 5 and "Qemu.Busy" in r.err, r.err
    finally:
        open(release, "w").close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert restore_bytes(ds, json.loads(out)["SnapshotId"], tmp_path) == read_all(daemon.guest)
    assert daemon.ours() == []


def test_a_view_qemu_refuses_leaves_no_nbd_server_behind(ds, daemon, tmp_path):
    """QEMU cannot open the overlay (its file is gone when the view is made): the overlay, the
    transaction and the NBD server go to QEMU in one round trip, the first two fail, the
    server starts. Nothing of the view stays, the server included; the next create works."""
    import glob
    proc, release = start_paused(ds, tmp_path, "qemu-before-view", "create", daemon.image, "--name", "refused", "--qmp", daemon.qmp_path)
    scratch = glob.glob(os.path.join(ds.repo, "tmp", "**", "disksnap-fleece-*.qcow2"), recursive=True)
    assert len(scratch) == 1
    os.unlink(scratch[0])
    open(release, "w").close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Qemu.CommandFailed" in err and "blockdev-add" in err, err
    assert daemon.ours() == []
    assert [e["id"] for e in daemon.command("query-block-exports")] == ["guest0"]
    assert not any(b.startswith("disksnap-") for b in daemon.bitmaps())
    # Had the server been left running, this would be Qemu.NbdServerInUse.
    snap = json.loads(create_live(ds, daemon, "after").out)["SnapshotId"]
    assert restore_bytes(ds, snap, tmp_path) == read_all(daemon.guest)

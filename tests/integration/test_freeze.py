"""`create --qmp --freeze`: a real VM (qemu-system-x86_64 under TCG, tools/make-guest) with
the QEMU guest agent in it. Its guest keeps written data in its page cache (writeback
off), so only a freeze puts it on the disk before the snapshot's instant."""
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from conftest import DiskSnap
from test_gc import start_paused
from guestvm import GuestVM


@pytest.fixture(scope="session")
def guest_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def vm(tmp_path, guest_dir):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-qF", str(raw)], check=True)
    image = tmp_path / "vm.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(image)], check=True)
    raw.unlink()
    machine = GuestVM(tmp_path, image, guest_dir).start()
    yield machine
    machine.stop()
    check = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def file_in_snapshot(ds, snap, tmp_path, name):
    """The file /name of the ext4 in the snapshot (None when absent), after e2fsck -fn of it."""
    out = tmp_path / f"restored-{snap}.raw"
    ds.run("restore", snap, out)
    fsck = subprocess.run(["e2fsck", "-fn", str(out)], capture_output=True, text=True)
    cat = subprocess.run(["debugfs", "-R", f"cat /{name}", str(out)], capture_output=True)
    out.unlink()
    return fsck.returncode, (cat.stdout if cat.stdout else None)


def freeze_args(vm, *extra):
    return ["--qmp", vm.qmp, "--freeze", "--guest-agent", vm.qga, *extra]


def test_a_frozen_snapshot_holds_what_the_guest_had_not_flushed(ds, vm, tmp_path):
    vm.agent.shell("echo written-before-the-freeze > /mnt/marker")
    r = ds.run("create", vm.image, "--name", "frozen", *freeze_args(vm), "--json")
    snap = json.loads(r.out)["SnapshotId"]
    assert "froze 1 guest filesystem(s)" in r.err
    record = ds.show(snap)
    assert record["GuestFrozen"] is True and record["FrozenFilesystems"] == 1
    assert 0 < record["FreezeMilliseconds"] < 30000
    assert vm.agent.freeze_status() == "thawed"
    # Application-consistent: the unflushed file is in it, and the filesystem is clean
    # (the freeze flushed its journal).
    fsck, content = file_in_snapshot(ds, snap, tmp_path, "marker")
    assert content == b"written-before-the-freeze\n"
    assert fsck == 0
    # The same without --freeze: the file written since is only in the guest's page cache,
    # so the crash-consistent snapshot lacks it (the test can fail).
    vm.agent.shell("echo written-after > /mnt/second")
    plain = ds.create(vm.image, "crash-consistent", "--qmp", vm.qmp)
    assert "GuestFrozen" not in ds.show(plain)
    assert file_in_snapshot(ds, plain, tmp_path, "second")[1] is None
    # The guest writes on.
    vm.agent.shell("echo after > /mnt/third && sync")


def test_a_killed_disksnap_never_leaves_the_guest_frozen(ds, vm, tmp_path):
    vm.agent.shell("echo unflushed > /mnt/marker")
    proc, release = start_paused(ds, tmp_path, "guest-frozen", "create", vm.image, "--name", "killed", *freeze_args(vm))
    # Frozen: the freeze flushed the guest's page cache into the image.
    with open(vm.image, "rb") as f:
        assert b"unflushed\n" in f.read()
    proc.kill()
    _, err = proc.communicate(timeout=90)  # the watchdog holds stderr until it is done
    assert "ended without thawing it" in err and "thawed" in err, err
    assert vm.agent.freeze_status() == "thawed"
    vm.agent.shell("echo alive > /mnt/after && sync")
    # The next run removes what the killed one left in QEMU and freezes again.
    r = ds.run("create", vm.image, "--name", "next", *freeze_args(vm), "--json")
    assert "left by a disksnap run that was killed" in r.err
    assert ds.show(json.loads(r.out)["SnapshotId"])["GuestFrozen"] is True


def test_a_run_that_overstays_the_freeze_limit_is_killed_and_the_guest_thawed(ds, vm, tmp_path):
    start = time.monotonic()
    proc, release = start_paused(ds, tmp_path, "guest-frozen", "create", vm.image, "--name", "hung",
                                 *freeze_args(vm, "--freeze-limit", "1"))
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == -9
    assert 10 < time.monotonic() - start < 60
    assert "held it frozen past 11 s: killed it" in err and "thawed" in err, err
    assert vm.agent.freeze_status() == "thawed"


def test_a_guest_frozen_by_someone_else_is_left_as_it_is(ds, vm, tmp_path):
    assert vm.agent.execute("guest-fsfreeze-freeze") == 1
    try:
        r = ds.run("create", vm.image, "--name", "theirs", *freeze_args(vm), check=False)
        assert r.code == 5 and "Guest.AlreadyFrozen" in r.err
        assert vm.agent.freeze_status() == "frozen"
    finally:
        vm.agent.execute("guest-fsfreeze-thaw")
    listed = ds.run("list", "--json").json()
    assert [s["Status"] for s in listed] == ["failed"]


def test_an_agent_that_does_not_answer(ds, vm, tmp_path):
    silent = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(silent))
    listener.listen(1)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    start = time.monotonic()
    r = ds.run("create", vm.image, "--name", "silent", "--qmp", vm.qmp, "--freeze", "--guest-agent", silent, check=False)
    assert r.code == 3 and "Guest.AgentUnreachable" in r.err and time.monotonic() - start < 30
    r = ds.run("create", vm.image, "--name", "missing", "--qmp", vm.qmp, "--freeze", "--guest-agent", tmp_path / "none", check=False)
    assert r.code == 3 and "Guest.AgentUnreachable" in r.err
    r = ds.run("create", vm.image, "--name", "noagent", "--qmp", vm.qmp, "--freeze", check=False)
    assert r.code == 2 and "InvalidParameter.Freeze" in r.err
    r = ds.run("create", vm.image, "--name", "noqmp", "--freeze", "--guest-agent", vm.qga, check=False)
    assert r.code == 2 and "InvalidParameter.Freeze" in r.err
    # Nothing of ours is left in QEMU, and a good run works.
    snap = ds.create(vm.image, "good", *freeze_args(vm))
    assert ds.show(snap)["GuestFrozen"] is True
    listener.close()

"""`create --domain`: a real libvirt 9.0 (libvirtd started by tools/libvirt-up) running the
tools/make-guest VM under TCG, its first disk a qcow2 ext4 (vda), its second a raw one
(vdb), with the guest agent on libvirt's channel. disksnap goes only through libvirt's API
(backup begin in pull mode, checkpoints, abort, fsfreeze); the test looks with virsh."""
import glob
import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from conftest import DiskSnap
from test_gc import start_paused
from test_freeze import file_in_snapshot as restored_file
from guestvm import build_guest, make_ext4_qcow2, ROOT

URI = "qemu:///system"


def virsh(*args, check=True):
    r = subprocess.run(["virsh", "-c", URI, *map(str, args)], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"virsh {' '.join(map(str, args))}: {r.stdout}{r.stderr}")
    return r


def agent(domain, command, args=None):
    message = {"execute": command}
    if args is not None:
        message["arguments"] = args
    return json.loads(virsh("qemu-agent-command", domain, json.dumps(message)).stdout)["return"]


def guest_shell(domain, script, timeout=60):
    """Runs /bin/sh -c SCRIPT in the guest through libvirt's agent: its stdout."""
    import base64
    pid = agent(domain, "guest-exec", {"path": "/bin/sh", "arg": ["-c", script], "capture-output": True})["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent(domain, "guest-exec-status", {"pid": pid})
        if status.get("exited"):
            out = base64.b64decode(status.get("out-data", ""))
            assert status.get("exitcode") == 0, f"guest: {script!r}: {status}"
            return out
        time.sleep(0.05)
    raise TimeoutError(script)


def checkpoints(domain, ds):
    """The domain's checkpoints of this repository (others' tests share the domain)."""
    with open(os.path.join(ds.repo, "config.json")) as f:
        prefix = f"disksnap-{json.load(f)['RepositoryId']}-"
    names = [line.strip() for line in virsh("checkpoint-list", domain, "--name").stdout.splitlines()]
    return [name for name in names if name.startswith(prefix)]


class Domain:
    def __init__(self, workdir):
        self.workdir = str(workdir)
        self.name = f"disksnap-test-{uuid.uuid4().hex[:8]}"
        self.qcow2 = make_ext4_qcow2(os.path.join(self.workdir, "vda.qcow2"))
        self.raw = os.path.join(self.workdir, "vdb.raw")
        with open(self.raw, "wb") as f:
            f.truncate(16 << 20)
        self.console = os.path.join(self.workdir, "console.log")
        kernel, initrd = build_guest()
        xml = f"""<domain type='qemu'>
  <name>{self.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
      <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{self.qcow2}'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{self.raw}'/><target dev='vdb' bus='virtio'/></disk>
    <serial type='file'><source path='{self.console}'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <memballoon model='none'/>
  </devices>
</domain>"""
        path = os.path.join(self.workdir, "domain.xml")
        with open(path, "w") as f:
            f.write(xml)
        virsh("define", path)

    def start(self, timeout=120):
        if os.path.exists(self.console):
            os.unlink(self.console)
        virsh("start", self.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.console, "rb") as f:
                    ready = b"GUEST-READY" in f.read()
            except OSError:
                ready = False
            if ready and virsh("qemu-agent-command", self.name, '{"execute":"guest-ping"}', check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"domain {self.name} did not come up; console: {open(self.console, 'rb').read()[-2000:]!r}")

    def qemu_pid(self):
        with open(f"/run/libvirt/qemu/{self.name}.pid") as f:
            return int(f.read().strip())

    def remove(self):
        virsh("destroy", self.name, check=False)
        virsh("undefine", self.name, "--checkpoints-metadata", check=False)


@pytest.fixture(scope="module")
def domain(tmp_path_factory):
    subprocess.run([os.path.join(ROOT, "tools", "libvirt-up")], check=True)
    d = Domain(tmp_path_factory.mktemp("libvirt")).start()
    yield d
    d.remove()
    for image in (d.qcow2,):
        check = subprocess.run(["qemu-img", "check", image], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def created(r):
    return json.loads(r.out)["SnapshotId"]


def test_frozen_full_then_incremental_through_libvirt(ds, domain, tmp_path):
    d = domain.name
    guest_shell(d, "echo unflushed-before-the-freeze > /mnt/marker")
    r = ds.run("create", "--domain", f"{d}:vda", "--name", "first", "--freeze", "--json")
    first = created(r)
    assert "froze 1 guest filesystem(s)" in r.err
    record = ds.show(first)
    assert record["ConsistencyMethod"] == "libvirt-pull-backup"
    assert record["GuestFrozen"] is True and record["FrozenFilesystems"] == 1
    tracking = record["ChangeTracking"]
    assert tracking["Method"] == "libvirt-checkpoint" and tracking["Domain"] == d and tracking["Target"] == "vda"
    assert "no earlier accomplished snapshot" in tracking["FullReadReason"]
    assert checkpoints(d, ds) == [tracking["Bitmap"]]
    assert agent(d, "guest-fsfreeze-status") == "thawed"
    assert virsh("domjobinfo", d).stdout.split("Job type:")[1].split()[0] == "None", "the backup job was ended"
    # Application-consistent: the file only the guest's page cache held is in it, and clean.
    fsck, content = restored_file(ds, first, tmp_path, "marker")
    assert fsck == 0 and content == b"unflushed-before-the-freeze\n"

    # The guest writes 1 MiB; the next snapshot (the disk named by its image) reads about that.
    digest = guest_shell(d, "dd if=/dev/urandom of=/mnt/new bs=64k count=16 2>/dev/null && sync && sha256sum /mnt/new").split()[0]
    r = ds.run("create", domain.qcow2, "--domain", d, "--name", "second", "--json")
    second = created(r)
    record = ds.show(second)
    tracking = record["ChangeTracking"]
    assert tracking.get("BaseSnapshotId") == first, tracking
    assert record["BytesRead"] < 4 << 20 < ds.show(first)["SourceSize"], record["BytesRead"]
    assert record["BytesRead"] >= 1 << 20
    fsck, content = restored_file(ds, second, tmp_path, "new")
    import hashlib
    assert fsck == 0 and hashlib.sha256(content).hexdigest().encode() == digest
    # The first snapshot's checkpoint went with the commit; the second's is the base now.
    assert checkpoints(d, ds) == [tracking["Bitmap"]]

    # The raw disk: libvirt keeps no checkpoint of it, so always a full read, said why.
    raw = created(ds.run("create", "--domain", f"{d}:vdb", "--name", "raw", "--json"))
    assert "only in qcow2" in ds.show(raw)["ChangeTracking"]["FullReadReason"]
    assert checkpoints(d, ds) == [tracking["Bitmap"]]

    # Deleting the snapshot removes its checkpoint: nothing is left that nobody uses.
    ds.run("delete", second)
    assert checkpoints(d, ds) == []
    third = created(ds.run("create", "--domain", f"{d}:vda", "--name", "third", "--json"))
    assert "ChangeTracking" in ds.show(third) and "BaseSnapshotId" not in ds.show(third)["ChangeTracking"]


def test_a_killed_run_is_cleaned_up_by_the_next(ds, domain, tmp_path):
    d = domain.name
    base = created(ds.run("create", "--domain", f"{d}:vda", "--name", "base", "--json"))
    base_checkpoint = ds.show(base)["ChangeTracking"]["Bitmap"]
    proc, _ = start_paused(ds, tmp_path, "qemu-after-view", "create", "--domain", f"{d}:vda", "--name", "killed")
    assert "Backup" in virsh("domjobinfo", d).stdout
    assert len(checkpoints(d, ds)) == 2
    proc.kill()
    proc.communicate(timeout=30)
    guest_shell(d, "echo after-the-kill > /mnt/after && sync")
    r = ds.run("create", "--domain", f"{d}:vda", "--name", "next", "--json")
    nxt = created(r)
    assert "removed backup job in libvirt, left by a disksnap run that was killed" in r.err, r.err
    assert "removed checkpoint" in r.err
    record = ds.show(nxt)
    assert record["ChangeTracking"].get("BaseSnapshotId") == base, record["ChangeTracking"]
    assert checkpoints(d, ds) == [record["ChangeTracking"]["Bitmap"]] and base_checkpoint not in checkpoints(d, ds)
    assert restored_file(ds, nxt, tmp_path, "after") == (0, b"after-the-kill\n")


def test_refusals_and_someone_elses_jobs_and_freezes(ds, domain, tmp_path):
    d = domain.name
    cases = [
        (["--domain", "no-such-domain"], 3, "Libvirt.DomainNotFound"),
        (["--domain", f"{d}:vdz"], 3, "Qemu.NodeNotFound"),
        (["--domain", d], 2, "Qemu.NodeAmbiguous"),
        (["--domain", f"{d}:"], 2, "InvalidParameter.Domain"),
        (["--domain", d, "--qmp", "/nonexistent"], 2, "InvalidParameter.Domain"),
        ([domain.raw, "--domain", f"{d}:vda"], 3, "Qemu.NodeNotFound"),
        (["--domain", f"{d}:vda", "--connect", "qemu+unix:///system?socket=/nonexistent"], 3, "Libvirt.Unreachable"),
    ]
    for args, code, what in cases:
        r = ds.run("create", *args, "--name", "refused", check=False)
        assert (r.code, what in r.err) == (code, True), (args, r.code, r.err)
    # libvirt's own monitor of the domain's QEMU (which libvirt holds): the QEMU is libvirt's,
    # driven through --domain only, said at once (not after waiting for a greeting).
    monitor = glob.glob(f"/var/lib/libvirt/qemu/domain-*-{d[:20]}/monitor.sock")  # libvirt cuts the name
    assert len(monitor) == 1, monitor
    r = ds.run("create", domain.qcow2, "--qmp", monitor[0], "--name", "refused", check=False)
    assert r.code == 2 and "Qemu.ManagedByLibvirt" in r.err and f"--domain {d}" in r.err, r.err
    # A backup job that is not ours is left running.
    job = tmp_path / "theirs.xml"
    job.write_text(f"""<domainbackup mode='pull'><server transport='unix' socket='{tmp_path}/theirs.sock'/>
      <disks><disk name='vda' backup='yes' type='file'><scratch file='{tmp_path}/theirs.qcow2'/></disk>
      <disk name='vdb' backup='no'/></disks></domainbackup>""")
    virsh("backup-begin", d, job)
    try:
        r = ds.run("create", "--domain", f"{d}:vda", "--name", "busy", check=False)
        assert r.code == 5 and "Qemu.Busy" in r.err and "not disksnap's" in r.err, r.err
        assert "Backup" in virsh("domjobinfo", d).stdout
    finally:
        virsh("domjobabort", d)
    # A guest someone else froze stays frozen.
    virsh("domfsfreeze", d)
    try:
        r = ds.run("create", "--domain", f"{d}:vda", "--name", "frozen", "--freeze", check=False)
        assert r.code == 5 and "Guest.AlreadyFrozen" in r.err, r.err
        assert agent(d, "guest-fsfreeze-status") == "frozen"
    finally:
        virsh("domfsthaw", d)
    assert virsh("domjobinfo", d).stdout.split("Job type:")[1].split()[0] == "None"


def test_a_killed_disksnap_never_leaves_the_guest_frozen(ds, domain, tmp_path):
    d = domain.name
    proc, _ = start_paused(ds, tmp_path, "guest-frozen", "create", "--domain", f"{d}:vda", "--name", "killed", "--freeze")
    assert agent(d, "guest-fsfreeze-status") == "frozen"
    proc.kill()
    _, err = proc.communicate(timeout=90)
    assert "ended without thawing it" in err and "thawed" in err, err
    assert agent(d, "guest-fsfreeze-status") == "thawed"
    snap = created(ds.run("create", "--domain", f"{d}:vda", "--name", "after", "--freeze", "--json"))
    assert ds.show(snap)["GuestFrozen"] is True


def test_qemu_killed_then_a_full_read_then_shut_off(ds, domain, tmp_path):
    d = domain.name
    created(ds.run("create", "--domain", f"{d}:vda", "--name", "before", "--json"))
    os.kill(domain.qemu_pid(), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "shut off" not in virsh("domstate", d).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    domain.start()
    guest_shell(d, "echo after-the-crash > /mnt/crash && sync")
    r = ds.run("create", "--domain", f"{d}:vda", "--name", "after-crash", "--json")
    record = ds.show(created(r))
    assert "cannot use checkpoint" in record["ChangeTracking"]["FullReadReason"], record["ChangeTracking"]
    assert restored_file(ds, record["SnapshotId"], tmp_path, "crash") == (0, b"after-the-crash\n")
    # Incremental again from there.
    again = ds.show(created(ds.run("create", "--domain", f"{d}:vda", "--name", "again", "--json")))
    assert again["ChangeTracking"].get("BaseSnapshotId") == record["SnapshotId"]
    # Shut off: the image itself is read (nothing runs it).
    virsh("shutdown", d, check=False)
    virsh("destroy", d, check=False)
    r = ds.run("create", "--domain", f"{d}:vda", "--name", "off", "--json")
    assert "is not running: read its disk vda" in r.err
    off = ds.show(created(r))
    assert off.get("ConsistencyMethod") != "libvirt-pull-backup" and off["Status"] == "accomplished"
    assert restored_file(ds, off["SnapshotId"], tmp_path, "crash") == (0, b"after-the-crash\n")
    # Left shut off: this is the module's last test (the fixture's teardown undefines it).

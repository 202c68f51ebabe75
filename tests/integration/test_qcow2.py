"""qcow2 images as the guest sees them, checked against qemu-img."""
import os
import signal
import struct
import subprocess

import pytest

from conftest import CHUNK, partition_bytes, sha256


def qemu_img(*args):
    return subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True, text=True).stdout


def as_raw(image, tmp_path):
    """What qemu-img says the guest sees."""
    out = tmp_path / (os.path.basename(image) + ".raw")
    qemu_img("convert", "-O", "raw", image, out)
    return out


def fixed_entries(repo, snap):
    """A fixed index's entries (everything after its header)."""
    data = open(os.path.join(repo, "fixed", snap + ".fidx"), "rb").read()
    return data[4096:]  # the 4096-byte header holds the snapshot id and time


@pytest.mark.parametrize("options", [[], ["-c"], ["-c", "-o", "compression_type=zstd"], ["-o", "cluster_size=2M"],
                                     ["-o", "cluster_size=512"], ["-o", "preallocation=metadata"], ["-o", "compat=0.10"]],
                         ids=["plain", "deflate", "zstd", "2M-clusters", "512B-clusters", "preallocated", "v2"])
def test_qcow2_snapshot_is_the_guest_disk_and_dedups_with_raw(ds, test_disk, tmp_path, options):
    raw_snap = ds.create(test_disk["v1"], "raw")
    image = tmp_path / "vm.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", *options, test_disk["v1"], image)
    snap = ds.create(image, "qcow")
    shown = ds.show(snap)
    assert shown["SourceFormat"] == "qcow2" and shown["SourceSize"] == test_disk["disk_size"]
    assert shown["BytesStoredNew"] == 0, "the guest disk dedups completely against the raw snapshot"
    assert fixed_entries(ds.repo, snap) == fixed_entries(ds.repo, raw_snap), "identical fixed indexes"
    out = tmp_path / "restored.img"
    ds.run("restore", snap, out)
    assert sha256(out) == sha256(as_raw(image, tmp_path)) == sha256(test_disk["v1"])
    assert shown["Identity"]["PartitionTableType"] == "gpt", "libblkid saw the guest's partition table"


def test_backing_chains(ds, test_disk, tmp_path):
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", test_disk["v1"], base)
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", overlay)  # relative name, as QEMU resolves it
    subprocess.run(["qemu-io", "-c", "write -P 0x61 1M 64k", "-c", "write -z 3M 64k", str(overlay)], check=True, capture_output=True)
    raw_base = tmp_path / "base.raw"
    raw_base.write_bytes(open(test_disk["v1"], "rb").read())
    raw_overlay = tmp_path / "raw-overlay.qcow2"
    qemu_img("create", "-f", "qcow2", "-b", raw_base, "-F", "raw", raw_overlay)
    subprocess.run(["qemu-io", "-c", "write -P 0x62 2M 128k", str(raw_overlay)], check=True, capture_output=True)
    for image, backing in ((overlay, base), (raw_overlay, raw_base)):
        snap = ds.create(image, image.stem)
        assert ds.show(snap)["BackingChain"] == [str(backing)]
        out = tmp_path / f"{image.stem}.img"
        ds.run("restore", snap, out)
        assert sha256(out) == sha256(as_raw(image, tmp_path))
    refused = ds.run("create", overlay, "--name", "no-backing", "--no-backing", check=False)
    assert refused.code == 2 and "backing file" in refused.err and "--no-backing" in refused.err
    # A chain that loops back on itself, and a missing backing file.
    one, two = tmp_path / "one.qcow2", tmp_path / "two.qcow2"
    qemu_img("create", "-f", "qcow2", one, "64M")
    qemu_img("create", "-f", "qcow2", "-b", one, "-F", "qcow2", two)
    qemu_img("rebase", "-u", "-b", two, "-F", "qcow2", one)
    r = ds.run("create", one, "--name", "looping", check=False)
    assert r.code == 6 and "comes back to itself" in r.err
    os.remove(raw_base)
    r = ds.run("create", raw_overlay, "--name", "orphan", check=False)
    assert r.code == 6 and "does not exist" in r.err


def test_unsupported_images_are_refused_by_feature(ds, tmp_path):
    encrypted = tmp_path / "enc.qcow2"
    # qemu-img times PBKDF2 to pick the LUKS iteration count and, on a loaded 2-core VM,
    # sometimes fails with "Unable to get accurate CPU usage": tried again, up to 5 times.
    for attempt in range(5):
        made = subprocess.run(["qemu-img", "create", "--object", "secret,id=sec0,data=password", "-f", "qcow2",
                               "-o", "encrypt.format=luks,encrypt.key-secret=sec0", str(encrypted), "16M"],
                              capture_output=True, text=True)
        if made.returncode == 0 or "accurate CPU usage" not in made.stderr:
            break
    assert made.returncode == 0, made.stderr
    r = ds.run("create", encrypted, "--name", "encrypted", check=False)
    assert r.code == 2 and "encryption" in r.err
    extended = tmp_path / "ext.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on", extended, "16M")
    r = ds.run("create", extended, "--name", "extended", check=False)
    assert r.code == 2 and "extended L2 entries" in r.err
    external = tmp_path / "external.qcow2"
    qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}", external, "16M")
    r = ds.run("create", external, "--name", "external", check=False)
    assert r.code == 2 and "external data file" in r.err
    broken = tmp_path / "broken.qcow2"
    qemu_img("create", "-f", "qcow2", broken, "16M")
    with open(broken, "r+b") as f:
        f.seek(24)
        f.write(struct.pack(">Q", 1 << 40))  # a 1 TiB disk: its one-entry L1 table covers 512 MiB
    r = ds.run("create", broken, "--name", "broken", check=False)
    assert r.code == 6 and "damaged qcow2" in r.err and "L1 table" in r.err
    forced = ds.run("create", broken, "--name", "as-raw", "--format", "raw")
    assert forced.code == 0, "--format raw snapshots the file's own bytes"


def test_live_images_are_refused_unless_allowed(ds, test_disk, tmp_path):
    image = tmp_path / "live.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", test_disk["v1"], image)
    sock = tmp_path / "qemu.sock"
    server = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "--socket", str(sock), str(image)])
    try:
        for _ in range(200):
            if sock.exists():
                break
            __import__("time").sleep(0.05)
        r = ds.run("create", image, "--name", "live", check=False)
        assert r.code == 4 and "Source.InUse" in r.err and "lock" in r.err
        snap = ds.create(image, "live-allowed", "--allow-live")
        assert ds.show(snap)["CrashConsistent"] is False
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    reader = subprocess.Popen(["qemu-nbd", "-r", "-f", "qcow2", "--socket", str(sock), str(image)])
    try:
        for _ in range(200):
            if sock.exists():
                break
            __import__("time").sleep(0.05)
        assert ds.show(ds.create(image, "read-only-user"))["CrashConsistent"] is True, "a reader is not a writer"
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait()
    with open(image, "r+b") as f:
        f.seek(72)
        features = struct.unpack(">Q", f.read(8))[0]
        f.seek(72)
        f.write(struct.pack(">Q", features | 1))  # the dirty bit
    r = ds.run("create", image, "--name", "dirty", check=False)
    assert r.code == 4 and "dirty bit" in r.err


def test_restore_as_qcow2(ds, test_disk, tmp_path):
    snap = ds.create(test_disk["v1"], "source")
    out = tmp_path / "out.qcow2"
    ds.run("restore", snap, out, "--format", "qcow2")
    check = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(out), test_disk["v1"]], check=True, capture_output=True)
    info = __import__("json").loads(qemu_img("info", "--output=json", out))
    assert info["virtual-size"] == test_disk["disk_size"] and info["format-specific"]["data"]["compat"] == "1.1"
    assert os.path.getsize(out) < test_disk["disk_size"] * 0.7, "unallocated clusters take no space"
    # Read back by disksnap itself: nothing new to store.
    again = ds.create(out, "round-trip")
    assert ds.show(again)["BytesStoredNew"] == 0
    # One partition as a qcow2 image.
    part = tmp_path / "part.qcow2"
    ds.run("restore", snap, part, "--format", "qcow2", "--partition", "1")
    expected = tmp_path / "part.raw"
    expected.write_bytes(partition_bytes(test_disk["v1"], test_disk["partition_offset"], test_disk["partition_size"]))
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(part), str(expected)], check=True, capture_output=True)
    subprocess.run(["qemu-img", "check", str(part)], check=True, capture_output=True)


def test_probe_and_diff_on_qcow2(ds, test_disk, tmp_path):
    image = tmp_path / "guest.qcow2"
    qemu_img("convert", "-f", "raw", "-O", "qcow2", test_disk["v1"], image)
    probed = ds.run("probe", image, "--json", repo=False).json()
    blkid = ds.run("probe", test_disk["v1"], "--json", repo=False).json()
    assert probed["PartitionTableUUID"] == blkid["PartitionTableUUID"]
    assert probed["Partitions"] == blkid["Partitions"], "the guest's partitions and filesystems, as libblkid sees the raw disk"
    snap = ds.create(image, "before")
    subprocess.run(["qemu-io", "-c", "write -P 0x77 2M 4k", str(image)], check=True, capture_output=True)
    d = ds.run("diff", snap, image, "--json").json()
    assert [[r["Start"], r["End"]] for r in d["Ranges"]] == [[2 << 20, (2 << 20) + CHUNK]]
    assert d["Ranges"][0]["Partitions"] == [1]
    after = ds.create(image, "after")
    assert ds.run("diff", snap, after, "--json").json()["ChangedChunks"] == 1

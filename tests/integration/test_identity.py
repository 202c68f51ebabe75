"""Issue #4: disk identity from libblkid, checked against blkid -p and sfdisk -J on real images."""
import json
import os
import subprocess
import pytest
from conftest import BIN, DiskSnap, Loop, sha256, e2fsck_partition

MIB = 1 << 20


def run(*argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True, **kw).stdout


def probe(path):
    r = subprocess.run([BIN, "probe", str(path), "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def blkid(path, offset=None, size=None):
    argv = ["blkid", "-p", "-o", "export"] + (["-O", str(offset), "-S", str(size)] if offset is not None else []) + [str(path)]
    r = subprocess.run(argv, capture_output=True, text=True)
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def assert_content_matches(ours, theirs):
    for key, field in (("TYPE", "Type"), ("UUID", "UUID"), ("LABEL", "Label"), ("VERSION", "Version"), ("USAGE", "Usage")):
        assert (ours or {}).get(field) == theirs.get(key), (key, ours, theirs)


def make_disk(path, size, table, parts):
    """A disk image with a partition table (sfdisk) and filesystems made on loop devices."""
    with open(path, "wb") as f:
        f.truncate(size)
    script = f"label: {table}\n" + "".join(f"size={p['size'] // 512}, type={p['type']}\n" for p in parts)
    subprocess.run(["sfdisk", "-q", str(path)], input=script, text=True, check=True, capture_output=True)
    layout = json.loads(run("sfdisk", "-J", path))["partitiontable"]["partitions"]
    for p, entry in zip(parts, layout):
        if p.get("mkfs"):
            with Loop(str(path), entry["start"] * 512, entry["size"] * 512) as dev:
                subprocess.run(p["mkfs"] + [dev], check=True, capture_output=True, input=p.get("input"), text=True)
    return layout


@pytest.fixture(scope="module")
def gpt_disk(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "gpt.img"
    parts = [
        {"size": 40 * MIB, "type": "0FC63DAF-8484-4E32-A4D9-A74D3A11F7E0", "mkfs": ["mkfs.ext4", "-q", "-L", "rootfs"]},
        {"size": 40 * MIB, "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "mkfs": ["mkfs.vfat", "-n", "ESP"]},
        {"size": 16 * MIB, "type": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "mkfs": ["mkswap", "-L", "swp"]},
        {"size": 320 * MIB, "type": "0FC63DAF-8484-4E32-A4D9-A74D3A11F7E0", "mkfs": ["mkfs.xfs", "-q", "-L", "data"]},
        {"size": 24 * MIB, "type": "CA7D7CCB-63ED-4C53-861C-1742536059CC",
         "mkfs": ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-"],
         "input": "secret"},
    ]
    layout = make_disk(path, 460 * MIB, "gpt", parts)
    return path, layout


def test_gpt_disk_matches_blkid_and_sfdisk(gpt_disk):
    path, layout = gpt_disk
    ours = probe(path)
    whole = blkid(path)
    table = json.loads(run("sfdisk", "-J", path))["partitiontable"]
    assert ours["PartitionTableType"] == whole["PTTYPE"] == "gpt"
    assert ours["PartitionTableUUID"] == whole["PTUUID"] == table["id"].lower()
    assert ours["Size"] == os.path.getsize(path)
    assert "Problem" not in ours
    assert len(ours["Partitions"]) == len(layout) == 5
    for mine, theirs in zip(ours["Partitions"], layout):
        assert mine["Start"] == theirs["start"] * 512 and mine["Size"] == theirs["size"] * 512
        assert mine["Type"] == theirs["type"].lower() and mine["UUID"] == theirs["uuid"].lower()
        assert_content_matches(mine.get("Content"), blkid(path, mine["Start"], mine["Size"]))
    types = [p.get("Content", {}).get("Type") for p in ours["Partitions"]]
    assert types == ["ext4", "vfat", "swap", "xfs", "crypto_LUKS"]
    assert ours["Partitions"][0]["Content"]["Label"] == "rootfs"


def test_dos_table_bare_filesystem_and_zero_disk(tmp_path):
    dos = tmp_path / "dos.img"
    layout = make_disk(dos, 64 * MIB, "dos", [{"size": 30 * MIB, "type": "83", "mkfs": ["mkfs.ext4", "-q", "-L", "boot"]},
                                              {"size": 20 * MIB, "type": "c", "mkfs": ["mkfs.vfat"]}])
    ours = probe(dos)
    whole = blkid(dos)
    assert ours["PartitionTableType"] == whole["PTTYPE"] == "dos" and ours["PartitionTableUUID"] == whole["PTUUID"]
    assert [p["Type"] for p in ours["Partitions"]] == ["83", "c"]
    for mine, theirs in zip(ours["Partitions"], layout):
        assert mine["Start"] == theirs["start"] * 512
        assert_content_matches(mine.get("Content"), blkid(dos, mine["Start"], mine["Size"]))

    bare = tmp_path / "bare.img"
    with open(bare, "wb") as f:
        f.truncate(32 * MIB)
    run("mkfs.ext4", "-q", "-L", "whole", bare)
    ours = probe(bare)
    assert "PartitionTableType" not in ours and ours["Partitions"] == []
    assert_content_matches(ours["Content"], blkid(bare))

    zero = tmp_path / "zero.img"
    with open(zero, "wb") as f:
        f.truncate(8 * MIB)
    ours = probe(zero)
    assert ours == {"Partitions": [], "Size": 8 * MIB}
    assert blkid(zero) == {}


def test_broken_gpt_is_reported_not_empty(tmp_path, gpt_disk):
    src, _ = gpt_disk
    broken = tmp_path / "broken.img"
    run("cp", "--sparse=always", src, broken)
    size = os.path.getsize(broken)
    with open(broken, "r+b") as f:
        f.seek(512)  # primary GPT header
        f.write(b"\0" * 512)
        f.seek(size - 512)  # backup GPT header
        f.write(b"\0" * 512)
    ours = probe(broken)
    assert "GPT" in ours.get("Problem", ""), ours
    assert ours["Partitions"] == []


def test_huge_sparse_image_probes_fast(tmp_path):
    huge = tmp_path / "huge.img"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)
    subprocess.run(["sfdisk", "-q", str(huge)], input="label: gpt\nsize=2097152, type=linux\n", text=True, check=True, capture_output=True)
    r = subprocess.run([BIN, "probe", str(huge), "--json"], capture_output=True, text=True, timeout=10)
    ours = json.loads(r.stdout)
    assert ours["Size"] == 1 << 40 and ours["PartitionTableType"] == "gpt" and len(ours["Partitions"]) == 1


def test_probe_of_loop_device_reports_sectors(gpt_disk):
    path, _ = gpt_disk
    with Loop(str(path), read_only=True) as dev:
        ours = probe(dev)
    assert ours["LogicalSectorSize"] == 512 and ours["PhysicalSectorSize"] >= 512
    assert ours["PartitionTableType"] == "gpt" and len(ours["Partitions"]) == 5


def test_missing_probe_source(tmp_path):
    r = subprocess.run([BIN, "probe", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 3 and "IO.NotFound" in r.stderr


def test_identity_recorded_compared_and_filterable(ds, test_disk, tmp_path):
    image = tmp_path / "disk.img"
    run("cp", "--sparse=always", test_disk["v1"], image)
    snap = ds.create(image, "first")
    record = ds.show(snap)
    part = record["Identity"]["Partitions"][0]
    assert part["Content"]["Type"] == "ext4" and part["Content"]["Label"] == "disksnap-test"
    text = ds.run("show", snap).out
    assert "disksnap-test" in text and "gpt" in text
    fs_uuid = part["Content"]["UUID"]
    assert [r["SnapshotId"] for r in ds.run("list", "--json", "--fs-uuid", fs_uuid.upper()).json()] == [snap]
    assert [r["SnapshotId"] for r in ds.run("list", "--json", "--fs-label", "disksnap-test").json()] == [snap]
    assert ds.run("list", "--json", "--fs-label", "other").json() == []
    # The disk grows: same disk, recorded as such.
    with open(image, "r+b") as f:
        f.truncate(os.path.getsize(image) + 8 * MIB)
    grown = ds.show(ds.create(image, "grown"))
    assert "grown" in grown["IdentityChange"]
    # Another disk at the same path: refused unless --force.
    other = tmp_path / "other.img"
    make_disk(other, 48 * MIB, "gpt", [{"size": 20 * MIB, "type": "0FC63DAF-8484-4E32-A4D9-A74D3A11F7E0", "mkfs": ["mkfs.ext4", "-q"]}])
    os.replace(other, image)
    r = ds.run("create", image, "--name", "third", "--json", check=False)
    assert r.code == 4 and json.loads(r.out)["Code"] == "DiskId.ValueNotSupported" and json.loads(r.out)["HttpStatus"] == 403
    assert "partition table UUID" in r.err
    assert [x["SnapshotName"] for x in ds.run("list", "--json").json()] == ["first", "grown"], "a refusal writes no record"
    forced = ds.show(ds.create(image, "third", "--force"))
    assert forced["IdentityChange"].startswith("replaced (--force)")
    ds.create(image, "fourth")  # the disk now carries the new identity


def test_restore_one_partition(ds, test_disk, gpt_disk, tmp_path):
    snap = ds.create(test_disk["v2"], "v2")
    out = tmp_path / "part1.img"
    ds.run("restore", snap, out, "--partition", "1")
    expected = tmp_path / "expected.img"
    off, size = test_disk["partition_offset"], test_disk["partition_size"]
    run("dd", f"if={test_disk['v2']}", f"of={expected}", "bs=1M", f"skip={off >> 20}", f"count={size >> 20}", "status=none")
    assert os.path.getsize(out) == size and sha256(out) == sha256(expected)
    subprocess.run(["e2fsck", "-fn", str(out)], check=True, capture_output=True)
    listing = run("debugfs", "-R", "ls -l /", out)
    assert "new-1.bin" in listing and "random.bin" in listing
    # To a block device, and partitions of other filesystems.
    gpt, _ = gpt_disk
    snap2 = ds.create(gpt, "multi")
    record = ds.show(snap2)
    vfat = next(p for p in record["Identity"]["Partitions"] if p["Content"]["Type"] == "vfat")
    target = tmp_path / "target.img"
    with open(target, "wb") as f:
        f.write(os.urandom(MIB))
        f.truncate(vfat["Size"])
    with Loop(str(target)) as dev:
        ds.run("restore", snap2, dev, "--partition", str(vfat["Number"]), "--force")
        fsck = subprocess.run(["fsck.vfat", "-n", dev], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout
    r = ds.run("restore", snap2, tmp_path / "x.img", "--partition", "9", check=False)
    assert r.code == 2 and "InvalidParameter.Partition" in r.err and not os.path.exists(tmp_path / "x.img")


def test_disk_scan_needs_no_repository_and_skips_empty_devices(gpt_disk, tmp_path):
    path, _ = gpt_disk
    env = dict(os.environ, DISKSNAP_REPO=str(tmp_path / "no-repo-here"))
    with Loop(str(path), read_only=True) as dev:
        r = subprocess.run([BIN, "disk", "scan", "--json"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        devices = {d["Path"]: d for d in json.loads(r.stdout)}
        unused = [f"/dev/{n}" for n in os.listdir("/sys/block") if open(f"/sys/block/{n}/size").read().strip() == "0"]
        ours = devices[dev]
        assert ours["Size"] == os.path.getsize(path) and ours["ReadOnly"] is True
        assert ours["Identity"]["PartitionTableType"] == "gpt"
        assert [p["Content"]["Type"] for p in ours["Identity"]["Partitions"]][:2] == ["ext4", "vfat"]
        # The scan holds nothing: the device can be detached at once.
    assert all(d["Size"] > 0 for d in devices.values())
    assert unused and not set(unused) & set(devices), "zero-size devices are skipped"
    assert not os.path.exists(tmp_path / "no-repo-here")


def test_disks_named_by_uuid_label_partuuid_ptuuid(ds, test_disk, tmp_path):
    image = tmp_path / "tagged.img"
    run("cp", "--sparse=always", test_disk["v1"], image)
    disk = ds.run("disk", "add", image, "--name", "tagged", "--json").json()
    ident = disk["Identity"]
    part = ident["Partitions"][0]
    for tag in (f"PTUUID={ident['PartitionTableUUID']}", f"PARTUUID={part['UUID'].upper()}",
                f"UUID={part['Content']['UUID']}", f"LABEL={part['Content']['Label']}"):
        assert ds.run("disk", "show", tag, "--json").json()["DiskId"] == disk["DiskId"], tag
        assert ds.show(ds.create(tag, "by-" + tag.split("=")[0].lower()))["SourceDiskId"] == disk["DiskId"]
    r = ds.run("create", "UUID=00000000-0000-0000-0000-000000000000", "--name", "nothing", check=False)
    assert r.code == 3 and "InvalidDiskId.NotFound" in r.err
    # A device of this machine, found by libblkid and registered on first use.
    bare = tmp_path / "bare.img"
    with open(bare, "wb") as f:
        f.truncate(32 * MIB)
    run("mkfs.ext4", "-q", "-L", "tagtest-bare", bare)
    with Loop(str(bare), read_only=True) as dev:
        probed = subprocess.run([BIN, "probe", "LABEL=tagtest-bare", "--json"], capture_output=True, text=True)
        assert probed.returncode == 0 and json.loads(probed.stdout)["Content"]["Label"] == "tagtest-bare"
        snap = ds.create("LABEL=tagtest-bare", "bylabel")
        assert ds.show(snap)["SourcePath"] == dev


def test_libblkid_handles_are_freed_on_every_path(gpt_disk, tmp_path):
    """valgrind on probe: no loss record may involve libblkid.

    libblkid keeps interior pointers into a probe, so a probe never freed shows up as
    "possibly lost" (about 500 KB for this disk), not "definitely lost": every kind is
    checked. valgrind 3.19 cannot read the toolchain's DWARF 5, so it runs on a copy of
    the binary with debug sections stripped (symbols kept).
    """
    binary = tmp_path / "disksnap"
    run("strip", "--strip-debug", "-o", binary, BIN)
    path, _ = gpt_disk
    broken = tmp_path / "broken.img"
    run("cp", "--sparse=always", path, broken)
    with open(broken, "r+b") as f:
        f.seek(512)
        f.write(b"\0" * 512)
        f.seek(os.path.getsize(broken) - 512)
        f.write(b"\0" * 512)
    for image in (path, broken, tmp_path / "missing.img"):
        r = subprocess.run(["valgrind", "--leak-check=full", "--show-leak-kinds=definite,indirect,possible",
                            str(binary), "probe", str(image)], capture_output=True, text=True, timeout=300)
        leaks = r.stderr.split("HEAP SUMMARY")[-1]
        assert "libblkid.so" not in leaks, f"libblkid memory lost probing {image}:\n{leaks[-3000:]}"
        report = leaks[leaks.find("LEAK SUMMARY"):]
        assert "definitely lost: 0 bytes" in report or "definitely lost" not in report, report


def test_restore_of_a_partition_off_the_4k_grid(ds, tmp_path):
    # A DOS partition at sector 63 (old tools' layout): its chunks do not land on the 4 KiB
    # boundaries O_DIRECT needs, so the restore must write them through the page cache.
    image = tmp_path / "dos63.img"
    with open(image, "wb") as f:
        f.truncate(24 * MIB)
    subprocess.run(["sfdisk", "-q", str(image)], input="label: dos\nstart=63, size=40000, type=83\n",
                   text=True, check=True, capture_output=True)
    data = os.urandom(40000 * 512 // 2) + bytes(40000 * 512 // 4) + os.urandom(40000 * 512 // 4)
    with open(image, "r+b") as f:
        f.seek(63 * 512)
        f.write(data)
    snap = ds.create(image, "dos63")
    out = tmp_path / "p1.img"
    ds.run("restore", snap, out, "--partition", "1")
    assert os.path.getsize(out) == len(data)
    with open(out, "rb") as f:
        assert f.read() == data
    whole = tmp_path / "whole.img"
    ds.run("restore", snap, whole)
    assert sha256(whole) == sha256(image)

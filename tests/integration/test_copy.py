"""disksnap copy (issue 15): snapshots between repositories, a directory or a bucket either
way; only what the target lacks travels, every copied chunk is verified, a killed copy
resumes, the target's rules hold."""
import json
import os
import subprocess

import pytest

from conftest import BIN, DiskSnap, sha256, e2fsck_partition
from test_gc import start_paused
from test_s3 import Bucket, seaweedfs  # noqa: F401 (a fixture)


def copy(src, target, *args, env=None, check=True):
    return src.run("copy", *args, "--to", target, "--json", env=env, check=check)


def restored(repo, snap, path):
    repo.run("restore", snap, path)
    return sha256(path)


def test_a_local_copy_restores_byte_for_byte_and_sends_only_what_the_target_lacks(tmp_path, test_disk):
    src = DiskSnap(str(tmp_path / "src"))
    one = src.create(test_disk["v1"], "one", "--description", "before the upgrade", "--tag", "env=prod")
    two = src.create(test_disk["v2"], "two")
    dst = DiskSnap(str(tmp_path / "dst"))
    dst.run("init")

    first = copy(src, dst.repo, one).json()
    [item] = first["Snapshots"]
    assert item["SnapshotId"] == one and item["Copied"] and item["ChunksCopied"] > 0 and item["DiskAdded"]
    # Both repositories compress alike: most blocks go over as stored, not compressed again.
    assert item["ChunksAsStored"] > item["ChunksCopied"] / 2, item
    second = copy(src, dst.repo, one, two).json()
    by_id = {s["SnapshotId"]: s for s in second["Snapshots"]}
    assert not by_id[one]["Copied"], "a snapshot the target holds was copied again"
    # v2 differs from v1 in a few MiB: only those chunks travel.
    assert 0 < by_id[two]["ChunksCopied"] < item["ChunksCopied"] / 4 and by_id[two]["ChunksPresent"] > 0, by_id[two]

    # The target's records are the source's: ids, names, descriptions, tags, times, index digests.
    for snap in (one, two):
        a, b = src.show(snap), dst.show(snap)
        for key in ("SnapshotName", "Description", "Tags", "CreationTime", "SourceDiskId", "SourceSize", "FixedIndexDigest", "Identity"):
            assert a.get(key) == b.get(key), key
        assert b["Status"] == "accomplished" and b["CopiedFrom"] and b["CopyTime"]
    disks = lambda repo: sorted((d["DiskId"], d["DiskName"], d["Path"]) for d in repo.run("disk", "list", "--json").json())
    assert disks(dst) == disks(src)
    for snap, image in ((one, test_disk["v1"]), (two, test_disk["v2"])):
        target = tmp_path / f"{snap}.img"
        assert restored(dst, snap, target) == sha256(image)
        e2fsck_partition(str(target), test_disk["partition_offset"], test_disk["partition_size"])
    report = dst.run("check", "--read-data", "--json").json()
    assert report["Problems"] == [] and report["ChunksVerified"] > 0, report
    # The target is a repository like any other: a create there dedups against the copies.
    three = dst.create(test_disk["v2"], "three")
    assert dst.show(three)["BytesStoredNew"] == 0
    # Everything again: nothing to do.
    again = copy(src, dst.repo, "--all").json()
    assert [s["Copied"] for s in again["Snapshots"]] == [False, False]


def test_copies_to_a_bucket_back_and_between_buckets_restore_byte_for_byte(seaweedfs, tmp_path, test_disk):
    src = DiskSnap(str(tmp_path / "src"))
    one = src.create(test_disk["v1"], "one")
    two = src.create(test_disk["v2"], "two")
    bucket = Bucket(seaweedfs, tmp_path)
    bucket.run("init")
    copy(src, bucket.repo, "--all", env=bucket.env)
    assert any(k.startswith("packs/") for k in bucket.keys())
    assert f"fixed/{two}.fidx" in bucket.keys() and f"snapshots/{one}.json" in bucket.keys()
    # Another host (a cache of its own) restores from the bucket.
    other = Bucket(seaweedfs, tmp_path, prefix=bucket.prefix, cache="host-b")
    assert restored(other, two, tmp_path / "b-two.img") == sha256(test_disk["v2"])
    assert other.run("check", "--read-data", "--json").json()["Problems"] == []
    # Bucket to bucket, then back to a new directory: the bytes survive both trips.
    second = Bucket(seaweedfs, tmp_path)
    second.run("init")
    r = bucket.run("copy", one, two, "--to", second.repo, "--json").json()
    assert all(s["Copied"] for s in r["Snapshots"])
    # Another compression in the target: every chunk is decoded and compressed again.
    home = DiskSnap(str(tmp_path / "home"))
    home.run("init", "--compression", "zstd:1")
    r = second.run("copy", "--all", "--to", home.repo, "--json").json()
    assert [s["SnapshotId"] for s in r["Snapshots"]] == [one, two]
    assert r["Snapshots"][0]["ChunksAsStored"] < r["Snapshots"][0]["ChunksCopied"] / 2, r
    for snap, image in ((one, test_disk["v1"]), (two, test_disk["v2"])):
        assert restored(home, snap, tmp_path / f"home-{snap}.img") == sha256(image)
    assert home.run("check", "--read-data", "--json").json()["Problems"] == []


def test_a_copy_killed_mid_run_resumes_from_its_last_checkpoint(tmp_path, test_disk):
    src = DiskSnap(str(tmp_path / "src"))
    one = src.create(test_disk["v1"], "one")
    dst = DiskSnap(str(tmp_path / "dst"))
    dst.run("init")
    whole = DiskSnap(str(tmp_path / "whole"))
    whole.run("init")
    total = copy(src, whole.repo, one).json()["Snapshots"][0]["BytesCopied"]
    # Checkpoints every 4 MiB of new chunks; killed after the first.
    env = dict(os.environ, DISKSNAP_COPY_CHECKPOINT_BYTES=str(4 << 20))
    proc, _ = start_paused(src, tmp_path, "copy-after-checkpoint", "copy", one, "--to", dst.repo, env=env)
    proc.kill()
    proc.wait()
    listed = {s["SnapshotId"]: s["Status"] for s in dst.run("list", "--json").json()}
    assert listed == {one: "failed"}, listed
    assert dst.run("check", "--json").json()["Problems"] == []
    r = copy(src, dst.repo, one, env=env).json()["Snapshots"][0]
    assert r["Copied"] and 0 < r["BytesCopied"] <= total - (4 << 20), (r, total)
    assert restored(dst, one, tmp_path / "one.img") == sha256(test_disk["v1"])
    assert dst.run("check", "--read-data", "--json").json()["Problems"] == []


@pytest.mark.parametrize("step", [3, 12, 30])
def test_a_copy_killed_at_a_durable_step_loses_nothing_and_the_next_one_completes(tmp_path, test_disk, step):
    src = DiskSnap(str(tmp_path / "src"))
    one = src.create(test_disk["v1"], "one")
    two = src.create(test_disk["v2"], "two")
    dst = DiskSnap(str(tmp_path / "dst"))
    dst.run("init")
    copy(src, dst.repo, one)
    r = copy(src, dst.repo, two, env=dict(os.environ, DISKSNAP_FAULT=str(step)), check=False)
    assert r.code == -9, f"step {step} was not reached: {r.err}"
    listed = {s["SnapshotId"]: s["Status"] for s in dst.run("list", "--json").json()}
    assert listed[one] == "accomplished" and listed.get(two) in (None, "failed"), listed
    assert dst.run("check", "--read-data", "--json").json()["Problems"] == []
    copy(src, dst.repo, two)
    for snap, image in ((one, test_disk["v1"]), (two, test_disk["v2"])):
        assert restored(dst, snap, tmp_path / f"{snap}.img") == sha256(image)


def test_a_damaged_source_chunk_fails_the_copy_and_is_never_stored(tmp_path, test_disk):
    src = DiskSnap(str(tmp_path / "src"))
    one = src.create(test_disk["v1"], "one")
    packs = sorted((tmp_path / "src" / "packs").iterdir())
    with open(packs[0], "r+b") as f:
        f.seek(os.path.getsize(packs[0]) // 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    dst = DiskSnap(str(tmp_path / "dst"))
    dst.run("init")
    r = copy(src, dst.repo, one, check=False)
    assert r.code == 6 and "Chunk.Corrupt" in r.out + r.err, (r.code, r.err)
    [record] = dst.run("list", "--json").json()
    assert record["Status"] == "failed"
    assert "copy from" in dst.show(one)["FailureReason"]
    assert dst.run("check", "--read-data", "--json").json()["Problems"] == []


def test_the_targets_rules_and_disks_hold(tmp_path, test_disk):
    src = DiskSnap(str(tmp_path / "src"))
    snaps = [src.create(test_disk["v1"], f"snap-{i}") for i in range(4)]
    # Simple Application Server rules in the target: 3 snapshots per server (a disk without an instance is one).
    swas = DiskSnap(str(tmp_path / "swas"))
    swas.run("init", "--profile", "swas")
    r = copy(src, swas.repo, "--all", check=False)
    assert r.code == 8 and "SnapshotLimitExceed" in r.err, r.err
    assert len([s for s in swas.run("list", "--json").json() if s["Status"] == "accomplished"]) == 3
    # Another disk at the same path in the target: two disk ids are not merged.
    other = DiskSnap(str(tmp_path / "other"))
    other.create(test_disk["v1"], "mine")
    r = copy(src, other.repo, snaps[0], check=False)
    assert r.code == 4 and "InvalidDiskPath.Duplicate" in r.err, r.err
    # The source itself, a missing target, an unknown snapshot.
    r = copy(src, src.repo, snaps[0], check=False)
    assert r.code == 2 and "Copy.SameRepository" in r.err, r.err
    r = copy(src, str(tmp_path / "nowhere"), snaps[0], check=False)
    assert r.code == 3 and "Repository.NotFound" in r.err, r.err
    r = copy(src, swas.repo, "no-such-snapshot", check=False)
    assert r.code == 3, r.err


@pytest.mark.parametrize("step", [10, 25])
def test_a_copy_into_a_bucket_killed_mid_run_loses_nothing_and_the_next_one_completes(seaweedfs, tmp_path, test_disk, step):
    src = DiskSnap(str(tmp_path / "src"))
    one = src.create(test_disk["v1"], "one")
    bucket = Bucket(seaweedfs, tmp_path)
    bucket.run("init")
    # DISKSNAP_FAULT=N: SIGKILL before the Nth durable step, uploads among them.
    r = copy(src, bucket.repo, one, env=dict(bucket.env, DISKSNAP_FAULT=str(step)), check=False)
    assert r.code == -9, f"step {step} was not reached: {r.err}"
    listed = {s["SnapshotId"]: s["Status"] for s in bucket.run("list", "--json").json()}
    assert listed.get(one) in (None, "failed"), listed
    assert bucket.run("check", "--json").json()["Problems"] == []
    assert copy(src, bucket.repo, one, env=bucket.env).json()["Snapshots"][0]["Copied"]
    assert restored(bucket, one, tmp_path / "one.img") == sha256(test_disk["v1"])
    assert bucket.run("check", "--read-data", "--json").json()["Problems"] == []

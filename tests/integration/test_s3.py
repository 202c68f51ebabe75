"""Repositories in a bucket (issue 15), on both real S3 servers the suite starts itself:
SeaweedFS (tools/s3-up) and Ceph's radosgw (tools/rgw-up). boto3, from the tools'
virtualenv, is the independent reader of what disksnap wrote."""
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import BIN, ROOT, Result, sha256, e2fsck_partition
from test_gc import start_paused

VENV = os.environ.get("DISKSNAP_VENV", "/var/cache/disksnap/venv")
SERVERS = {"seaweedfs": "s3-up", "rgw": "rgw-up"}
BUCKET = "disksnap-it"


def start(script):
    proc = subprocess.run([os.path.join(ROOT, "tools", script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"tools/{script} failed: {proc.stderr[-2000:]}"
    env = {}
    for word in proc.stdout.split():
        if "=" in word and word != "export":
            key, value = word.split("=", 1)
            env[key] = value
    return env


def boto(server, script, *args):
    """Runs `script` in the virtualenv's Python with a boto3 client `s3` for `server`."""
    prelude = (
        "import boto3, botocore, json, sys\n"
        f"s3 = boto3.client('s3', endpoint_url={server['endpoint']!r}, aws_access_key_id={server['key']!r},"
        f" aws_secret_access_key={server['secret']!r}, region_name='us-east-1',"
        " config=botocore.config.Config(s3={'addressing_style': 'path'}))\n"
    )
    proc = subprocess.run([os.path.join(VENV, "bin", "python"), "-c", prelude + script, *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def connect(name):
    env = start(SERVERS[name])
    s = {"name": name, "endpoint": env["DISKSNAP_TEST_S3_ENDPOINT"],
         "key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}
    boto(s, f"""
try:
    s3.create_bucket(Bucket={BUCKET!r})
except botocore.exceptions.ClientError as e:
    if e.response['Error']['Code'] not in ('BucketAlreadyOwnedByYou', 'BucketAlreadyExists'):
        raise
""")
    return s


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request):
    """Each server in turn: for what the strict one (RGW) must also accept."""
    return connect(request.param)


@pytest.fixture(scope="module")
def seaweedfs():
    """SeaweedFS alone: for behaviour of ours that does not depend on the server (the
    conformance suite covers both servers' semantics), to keep the suite's time down."""
    return connect("seaweedfs")


# A repository in a bucket is encrypted unless `init --encryption none` says otherwise: every
# command here gets the passphrase.
PASSWORD = "bucket passphrase"


class Bucket:
    """`disksnap --repo s3://BUCKET/PREFIX` with the AWS environment of a server, a cache of
    its own, and the passphrase."""

    def __init__(self, server, tmp_path, prefix=None, cache="cache"):
        self.server = server
        self.prefix = prefix or "it-" + uuid.uuid4().hex[:12]
        self.repo = f"s3://{BUCKET}/{self.prefix}"
        self.env = dict(os.environ, AWS_ENDPOINT_URL=server["endpoint"], AWS_ACCESS_KEY_ID=server["key"],
                        AWS_SECRET_ACCESS_KEY=server["secret"], AWS_REGION="us-east-1",
                        XDG_CACHE_HOME=str(tmp_path / cache), DISKSNAP_PASSWORD=PASSWORD)

    def run(self, *args, check=True, env=None):
        argv = [BIN, "--repo", self.repo] + [str(a) for a in args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env or self.env, timeout=300)
        result = Result(proc)
        if check and result.code != 0:
            raise AssertionError(f"{argv} exited {result.code}\nstdout: {result.out}\nstderr: {result.err}")
        return result

    def create(self, source, name):
        return self.run("create", source, "--name", name, "--json").json()["SnapshotId"]

    def keys(self):
        out = boto(self.server, """
keys = []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], Prefix=sys.argv[2] + '/'):
    keys += [o['Key'][len(sys.argv[2]) + 1:] for o in page.get('Contents', [])]
print(json.dumps(keys))
""", BUCKET, self.prefix)
        return json.loads(out)


def test_a_snapshot_in_a_bucket_restores_byte_for_byte_and_passes_e2fsck(server, tmp_path, test_disk):
    b = Bucket(server, tmp_path)
    b.run("init")
    one = b.create(test_disk["v1"], "one")
    two = b.create(test_disk["v2"], "two")
    assert b.run("show", two, "--json").json()["Status"] == "accomplished"
    # What boto3 sees: the repository's objects, packs among them, and nothing left in a work area.
    keys = b.keys()
    assert "config.json" in keys
    assert f"snapshots/{one}.json" in keys and f"fixed/{two}.fidx" in keys
    assert any(k.startswith("packs/") and k.endswith(".pack") for k in keys)
    assert any(k.startswith("index/") for k in keys)
    assert not any(k.startswith("tmp/") or k.startswith("locks/create-") for k in keys)
    assert all(k.endswith(".lease") for k in keys if k.startswith("locks/"))
    for snap, image in ((one, test_disk["v1"]), (two, test_disk["v2"])):
        target = tmp_path / f"{snap}.img"
        b.run("restore", snap, target)
        assert sha256(target) == sha256(image)
        e2fsck_partition(str(target), test_disk["partition_offset"], test_disk["partition_size"])
    report = b.run("check", "--read-data", "--json").json()
    assert report["Problems"] == [] and report["ChunksVerified"] > 0


def test_the_second_snapshot_stores_only_what_changed(seaweedfs, tmp_path, test_disk):
    b = Bucket(seaweedfs, tmp_path)
    b.create(test_disk["v1"], "one")
    packs = lambda: {k for k in b.keys() if k.startswith("packs/")}
    before = packs()
    again = b.create(test_disk["v1"], "again")
    assert packs() == before, "an unchanged disk uploaded packs"
    assert b.run("show", again, "--json").json()["Status"] == "accomplished"


def test_another_host_sees_the_bucket_through_a_fresh_cache(seaweedfs, tmp_path, test_disk):
    b = Bucket(seaweedfs, tmp_path)
    snap = b.create(test_disk["v1"], "one")
    other = Bucket(seaweedfs, tmp_path, prefix=b.prefix, cache="other-cache")
    listed = other.run("list", "--json").json()
    assert [s["SnapshotId"] for s in listed] == [snap]
    target = tmp_path / "other.img"
    other.run("restore", "one", target)
    assert sha256(target) == sha256(test_disk["v1"])
    # A delete through one cache is seen by the other, whose stale copy goes at its next open.
    other.run("delete", "one")
    assert f"snapshots/{snap}.json" not in b.keys()
    assert b.run("list", "--json").json() == []


def test_a_lost_cache_is_rebuilt_from_the_bucket(seaweedfs, tmp_path, test_disk):
    b = Bucket(seaweedfs, tmp_path)
    snap = b.create(test_disk["v1"], "one")
    shutil.rmtree(tmp_path / "cache")
    b.create(test_disk["v2"], "two")
    assert b.run("show", snap, "--json").json()["Status"] == "accomplished"
    assert b.run("check", "--json").json()["Problems"] == []


def test_a_corrupted_pack_object_is_found_by_check(seaweedfs, tmp_path, test_disk):
    b = Bucket(seaweedfs, tmp_path)
    b.create(test_disk["v1"], "one")
    pack = sorted(k for k in b.keys() if k.startswith("packs/"))[0]
    boto(seaweedfs, """
body = bytearray(s3.get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read())
body[len(body) // 3] ^= 0xFF
s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=bytes(body))
""", BUCKET, f"{b.prefix}/{pack}")
    r = b.run("check", "--read-data", check=False)
    assert r.code == 1, r.out + r.err
    assert "Chunk.Corrupt" in r.out + r.err or "corrupt" in (r.out + r.err).lower()


def test_wrong_credentials_a_missing_bucket_and_a_bad_address_fail_with_their_codes(seaweedfs, tmp_path, test_disk):
    b = Bucket(seaweedfs, tmp_path)
    b.run("init")
    wrong = dict(b.env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    r = b.run("list", check=False, env=wrong)
    assert r.code == 7 and "BlobStore.AccessDenied" in r.err, r.err
    missing = Bucket(seaweedfs, tmp_path)
    missing.repo = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x"
    r = missing.run("create", test_disk["v1"], "--name", "one", check=False)
    assert r.code == 7 and "BlobStore.AccessDenied" in r.err, r.err
    bad = Bucket(seaweedfs, tmp_path)
    bad.repo = "s3://Not_A_Bucket/x"
    r = bad.run("list", check=False)
    assert r.code == 2 and "not a bucket name" in r.err, r.err
    unsigned = {k: v for k, v in b.env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    unsigned["HOME"] = str(tmp_path)  # no ~/.aws either
    r = b.run("list", check=False, env=unsigned)
    assert r.code == 7 and "no credentials" in r.err, r.err


def test_a_second_init_of_one_prefix_is_refused(seaweedfs, tmp_path):
    b = Bucket(seaweedfs, tmp_path)
    b.run("init")
    r = b.run("init", check=False)
    assert r.code == 4 and "Repository.AlreadyExists" in r.err, r.err


def finish(proc, release):
    """Lets a command `start_paused` holds go on; returns its output once it succeeded."""
    release.touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def pack_bytes(bucket):
    out = boto(bucket.server, """
total = 0
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], Prefix=sys.argv[2] + '/packs/'):
    total += sum(o['Size'] for o in page.get('Contents', []))
print(total)
""", BUCKET, bucket.prefix)
    return int(out)


def test_gc_and_repair_in_a_bucket_free_what_deleted_snapshots_held_and_keep_the_rest(server, tmp_path, test_disk):
    a = Bucket(server, tmp_path)
    one = a.create(test_disk["v1"], "one")
    old = a.create(test_disk["v2"], "old")
    two = a.create(test_disk["v2"], "two")
    a.run("delete", one)
    pruned = a.run("prune", "--keep-last", "1", "--disk", test_disk["v2"], "--json").json()
    assert pruned["Deleted"] == [old], pruned
    before = pack_bytes(a)
    r = a.run("gc", "--live-threshold", "1", "--json").json()
    assert r["PacksRemoved"] > 0 and r.get("Deferred") is None, r
    assert pack_bytes(a) < before
    assert "gc.json" not in a.keys()
    # Another host (a cache of its own) restores what is left, and repairs the index from the packs.
    b = Bucket(server, tmp_path, prefix=a.prefix, cache="host-b")
    target = tmp_path / "two.img"
    b.run("restore", two, target)
    assert sha256(target) == sha256(test_disk["v2"])
    repaired = b.run("check", "--repair", "--json")
    assert "snapshots marked damaged: none" in repaired.err and repaired.json()["Problems"] == [], repaired.err
    report = a.run("check", "--read-data", "--json").json()
    assert report["Problems"] == [] and report["ChunksVerified"] > 0, report
    target.unlink()
    a.run("restore", two, target)
    assert sha256(target) == sha256(test_disk["v2"])


def test_gc_in_a_bucket_waits_for_another_hosts_reader_and_create(seaweedfs, tmp_path, test_disk):
    a = Bucket(seaweedfs, tmp_path)
    one = a.create(test_disk["v1"], "one")
    two = a.create(test_disk["v2"], "two")
    b = Bucket(seaweedfs, tmp_path, prefix=a.prefix, cache="host-b")
    # A restore on host B holds the readers' lease: gc on host A copies, but removes nothing.
    proc, release = start_paused(b, tmp_path, "restore-after-index", "restore", one, tmp_path / "one.img", env=b.env)
    try:
        a.run("delete", one)
        packs = {k for k in a.keys() if k.startswith("packs/")}
        r = a.run("gc", "--live-threshold", "1", "--json").json()
        assert r["PacksRemoved"] == 0 and "reading" in (r.get("Deferred") or ""), r
        assert packs <= {k for k in a.keys() if k.startswith("packs/")}, "gc removed a pack under a reader"
    finally:
        finish(proc, release)
    assert sha256(tmp_path / "one.img") == sha256(test_disk["v1"])
    r = a.run("gc", "--live-threshold", "1", "--json").json()
    assert r["PacksRemoved"] > 0 and r.get("Deferred") is None, r
    # A create running on host B when gc condemns: the sweep waits for it to end.
    proc, release = start_paused(b, tmp_path, "create-after-index", "create", test_disk["v1"], "--name", "three", "--json", env=b.env)
    try:
        a.run("delete", two)
        r = a.run("gc", "--live-threshold", "1", "--json").json()
        assert r["PacksCondemned"] > 0 and r["PacksRemoved"] == 0 and "waiting for the creation" in (r.get("Deferred") or ""), r
    finally:
        three = json.loads(finish(proc, release))["SnapshotId"]
    r = a.run("gc", "--live-threshold", "1", "--json").json()
    assert r["PacksRemoved"] > 0 and r.get("Deferred") is None, r
    target = tmp_path / "three.img"
    a.run("restore", three, target)
    assert sha256(target) == sha256(test_disk["v1"])
    assert a.run("check", "--read-data", "--json").json()["Problems"] == []
    assert not [k for k in a.keys() if k.startswith("locks/") and "/" in k[len("locks/"):]], "a reader's lease was left behind"


@pytest.mark.parametrize("step", [8, 25])
def test_a_gc_killed_mid_run_in_a_bucket_loses_nothing(seaweedfs, tmp_path, test_disk, step):
    a = Bucket(seaweedfs, tmp_path)
    one = a.create(test_disk["v1"], "one")
    two = a.create(test_disk["v2"], "two")
    a.run("delete", one)
    r = a.run("gc", "--live-threshold", "1", check=False, env=dict(a.env, DISKSNAP_FAULT=str(step)))
    assert r.code == -9, f"step {step} was not reached: {r.err}"
    # The killed gc's leases are of this boot and its process is gone: nothing waits for them.
    assert a.run("check", "--read-data", "--json").json()["Problems"] == []
    r = a.run("gc", "--live-threshold", "1", "--json").json()
    assert r.get("Deferred") is None, r
    target = tmp_path / "two.img"
    a.run("restore", two, target)
    assert sha256(target) == sha256(test_disk["v2"])
    assert a.run("check", "--read-data", "--json").json()["Problems"] == []


@pytest.mark.parametrize("step", [15, 60])
def test_a_create_killed_mid_run_loses_nothing_stored_and_the_next_one_works(server, tmp_path, test_disk, step):
    b = Bucket(server, tmp_path)
    first = b.create(test_disk["v1"], "first")
    # DISKSNAP_FAULT=N: the process SIGKILLs itself before its Nth durable step (debug builds),
    # here somewhere among the work area's writes, the uploads and the record's writes.
    r = b.run("create", test_disk["v2"], "--name", "killed", check=False, env=dict(b.env, DISKSNAP_FAULT=str(step)))
    assert r.code == -9, f"step {step} was not reached: {r.err}"
    listed = {s["SnapshotName"]: s["Status"] for s in b.run("list", "--json").json()}
    assert listed["first"] == "accomplished"
    assert listed.get("killed") in (None, "failed"), listed
    report = b.run("check", "--read-data", "--json").json()
    assert report["Problems"] == [], report
    again = b.create(test_disk["v2"], "again")
    for snap, image in ((first, test_disk["v1"]), (again, test_disk["v2"])):
        target = tmp_path / f"{snap}.img"
        b.run("restore", snap, target)
        assert sha256(target) == sha256(image)


def test_another_host_sees_a_running_create_through_its_leases_and_a_killed_one_expire(server, tmp_path, test_disk):
    a = Bucket(server, tmp_path)
    a.create(test_disk["v1"], "first")
    b = Bucket(server, tmp_path, prefix=a.prefix, cache="host-b")
    proc, _ = start_paused(a, tmp_path, "create-after-index", "create", test_disk["v2"], "--name", "running",
                           env=dict(a.env, DISKSNAP_LEASE_SECONDS="2"))
    try:
        # Held longer than one lease lasts: renewals keep it alive for the other host.
        time.sleep(3)
        b_env = dict(b.env, DISKSNAP_LEASE_SECONDS="2")
        listed = {s["SnapshotName"]: s for s in b.run("list", "--json", env=b_env).json()}
        assert listed["running"]["Status"] == "progressing"
        r = b.run("delete", "running", check=False, env=b_env)
        assert r.code == 5 and "IncorrectSnapshotStatus" in r.err, r.err
        r = b.run("create", test_disk["v2"], "--name", "second", check=False, env=b_env)
        assert r.code == 5 and "IncorrectDiskStatus.CreatingSnapshot" in r.err, r.err
        proc.kill()
        proc.wait()
        # As if the creator had run on another host (its leases name another boot), its death
        # cannot be seen from here: the record stays progressing while the lease may live.
        running = listed["running"]["SnapshotId"]
        boto(server, """
for key in sys.argv[2:]:
    lease = json.loads(s3.get_object(Bucket=sys.argv[1], Key=key)['Body'].read())
    names = [k for k in lease if k.lower() == 'bootid']
    assert names, lease
    lease[names[0]] = 'another-boot'
    s3.put_object(Bucket=sys.argv[1], Key=key, Body=json.dumps(lease).encode())
""", BUCKET, f"{a.prefix}/locks/create-{running}.lease")
        listed = {s["SnapshotName"]: s for s in b.run("list", "--json", env=b_env).json()}
        assert listed["running"]["Status"] == "progressing"
        # It renews nothing: after its lease and the skew (2 s each here) the other host sees
        # the record failed, and may create again (the disk's lease, of this boot, is free at once).
        time.sleep(5)
        listed = {s["SnapshotName"]: s for s in b.run("list", "--json", env=b_env).json()}
        assert listed["running"]["Status"] == "failed", listed["running"]
        second = b.create(test_disk["v2"], "second")
        target = tmp_path / "second.img"
        b.run("restore", second, target)
        assert sha256(target) == sha256(test_disk["v2"])
        # No creation's lease is left behind but the killed one's (the disks' own stay, released).
        assert [k for k in a.keys() if k.startswith("locks/create-")] == [f"locks/create-{running}.lease"]
    finally:
        if proc.poll() is None:
            proc.kill()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_that_ignores_conditional_writes_is_refused_before_anything_is_written(seaweedfs, tmp_path, test_disk):
    # SeaweedFS behind a proxy that drops If-None-Match and If-Match (and signs again): a server
    # that accepts every request but honours no condition.
    port = free_port()
    proxy = subprocess.Popen([os.path.join(VENV, "bin", "python"), os.path.join(os.path.dirname(__file__), "s3_unconditional.py"),
                              str(port), seaweedfs["endpoint"], seaweedfs["key"], seaweedfs["secret"]],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.stdout.readline().strip() == "ready", proxy.stderr.read()
        b = Bucket(dict(seaweedfs, endpoint=f"http://127.0.0.1:{port}"), tmp_path)
        # Plain reads and writes pass through: what is refused is the missing conditions.
        boto(b.server, "s3.put_object(Bucket=sys.argv[1], Key=sys.argv[2], Body=b'x')", BUCKET, f"{b.prefix}/through-the-proxy")
        for argv in (["init"], ["create", test_disk["v1"], "--name", "one"]):
            r = b.run(*argv, check=False)
            assert r.code == 2 and "BlobStore.Unsupported" in r.err and "If-None-Match" in r.err, r.err
        direct = Bucket(seaweedfs, tmp_path, prefix=b.prefix)
        assert direct.keys() == ["through-the-proxy"], "a refused init left objects behind"
    finally:
        proxy.kill()
        proxy.wait()


def test_a_server_killed_and_restarted_mid_create_loses_nothing(seaweedfs, tmp_path, test_disk):
    b = Bucket(seaweedfs, tmp_path)
    first = b.create(test_disk["v1"], "first")
    proc, release = start_paused(b, tmp_path, "create-after-index", "create", test_disk["v2"], "--name", "second", "--json", env=b.env)
    pid_file = os.path.join(os.environ.get("DISKSNAP_S3_DIR", "/tmp/disksnap-s3"), "pid")
    with open(pid_file) as f:
        pid = int(f.read())
    os.kill(pid, 9)
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.05)
    try:
        # The create goes on against a dead server (its uploads and record fail and are
        # retried), and the server comes back within the retries' 10 s.
        release.touch()
        released = time.monotonic()
        time.sleep(1)
        assert proc.poll() is None, "the create ended while the server was down"
    finally:
        start(SERVERS["seaweedfs"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert time.monotonic() - released > 1
    second = json.loads(out)["SnapshotId"]
    listed = {s["SnapshotId"]: s["Status"] for s in b.run("list", "--json").json()}
    assert listed == {first: "accomplished", second: "accomplished"}, listed
    assert b.run("check", "--read-data", "--json").json()["Problems"] == []
    for snap, image in ((first, test_disk["v1"]), (second, test_disk["v2"])):
        target = tmp_path / f"{snap}.img"
        b.run("restore", snap, target)
        assert sha256(target) == sha256(image)

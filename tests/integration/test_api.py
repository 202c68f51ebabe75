"""`disksnap serve` driven by the official cloud SDKs, unmodified (docs/API.md)."""
import concurrent.futures
import json
import os
import stat
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, DiskSnap, sha256
import api_clients
from api_clients import Server, ecs, ecs_client, wait_accomplished


def make_ext4(path, size_mib, marker):
    """A real ext4 image holding a few files (mkfs.ext4 -d)."""
    content = path + ".d"
    os.makedirs(content, exist_ok=True)
    with open(os.path.join(content, "marker.txt"), "w") as f:
        f.write(marker * 1000)
    with open(os.path.join(content, "random.bin"), "wb") as f:
        f.write(os.urandom(2 << 20))
    subprocess.run(["truncate", "-s", f"{size_mib}M", path], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", content, path], check=True)
    return path


class Env:
    def __init__(self, tmp_path, disks=2, profile="ecs"):
        self.tmp = str(tmp_path)
        self.ds = DiskSnap(str(tmp_path / "repo"))
        self.ds.run("init", "--profile", profile)
        self.disks = []
        for i in range(disks):
            image = make_ext4(str(tmp_path / f"disk{i}.img"), 32, f"disk{i}")
            kind = "system" if i == 0 else "data"
            disk = self.ds.run("disk", "add", image, "--name", f"disk{i}", "--type", kind, "--instance", "i-one", "--json").json()
            self.disks.append((disk["DiskId"], image))
        self.key = self.ds.run("serve", "--new-key", "--json").json()
        self.servers = []

    def serve(self, env=None, extra=()):
        server = Server(BIN, self.ds.repo, env=env, extra=extra)
        self.servers.append(server)
        return server

    def close(self):
        for server in self.servers:
            server.stop()


@pytest.fixture
def api(tmp_path):
    env = Env(tmp_path)
    yield env
    env.close()


def wait_until(check, timeout=60, what="the condition"):
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, f"{what} not reached after {timeout} s"
        time.sleep(0.2)


def error_of(call):
    """The SDK's exception for a call that must fail: (code, HTTP status)."""
    with pytest.raises(Exception) as caught:
        call()
    e = caught.value
    return getattr(e, "code", None), getattr(e, "status_code", None)


@pytest.mark.parametrize("algorithm", [None, "v2"])
def test_ecs_create_describe_restore_delete(api, algorithm):
    server = api.serve()
    client = ecs_client(server.endpoint, api.key, algorithm)
    disk_id, image = api.disks[1]
    made = client.create_snapshot(ecs.CreateSnapshotRequest(
        disk_id=disk_id, snapshot_name="nightly-1", description="before the upgrade",
        tag=[ecs.CreateSnapshotRequestTag(key="team", value="storage")])).body
    assert made.snapshot_id.startswith("s-") and made.request_id
    snap = wait_accomplished(client, made.snapshot_id)
    assert snap.status == "accomplished" and snap.progress == "100%" and snap.available is True
    assert snap.snapshot_name == "nightly-1" and snap.description == "before the upgrade"
    assert snap.source_disk_id == disk_id and snap.source_disk_type == "Data" and snap.snapshot_type == "user"
    assert [(t.tag_key, t.tag_value) for t in snap.tags.tag] == [("team", "storage")]
    # What the API made is the disk, byte for byte, and the CLI sees the same snapshot.
    restored = os.path.join(api.tmp, "restored.img")
    api.ds.run("restore", made.snapshot_id, restored)
    assert sha256(restored) == sha256(image)
    subprocess.run(["e2fsck", "-fn", restored], check=True, capture_output=True)
    assert [s["SnapshotId"] for s in api.ds.run("list", "--json").json()] == [made.snapshot_id]

    # Filters and paging.
    client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=api.disks[0][0], snapshot_name="sys-1"))
    listed = client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", disk_id=disk_id)).body
    assert listed.total_count == 1 and listed.snapshots.snapshot[0].snapshot_id == made.snapshot_id
    by_tag = client.describe_snapshots(ecs.DescribeSnapshotsRequest(
        region_id="local", tag=[ecs.DescribeSnapshotsRequestTag(key="team", value="storage")])).body
    assert [s.snapshot_id for s in by_tag.snapshots.snapshot] == [made.snapshot_id]
    page = client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", page_size=1, page_number=2)).body
    assert page.total_count == 2 and page.page_number == 2 and len(page.snapshots.snapshot) == 1
    first = client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", max_results=10)).body
    assert first.next_token == "" and len(first.snapshots.snapshot) == 2
    by_system = client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", source_disk_type="System")).body
    assert [s.snapshot_name for s in by_system.snapshots.snapshot] == ["sys-1"]
    disks = client.describe_disks(ecs.DescribeDisksRequest(region_id="local", instance_id="i-one")).body
    assert sorted(d.disk_id for d in disks.disks.disk) == sorted(d for d, _ in api.disks)
    assert {d.type for d in disks.disks.disk} == {"system", "data"}

    client.delete_snapshot(ecs.DeleteSnapshotRequest(snapshot_id=made.snapshot_id))
    after = client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", disk_id=disk_id)).body
    assert after.total_count == 0
    assert error_of(lambda: client.delete_snapshot(ecs.DeleteSnapshotRequest(snapshot_id=made.snapshot_id))) == ("InvalidSnapshotId.NotFound", 404)
    assert len(api.ds.run("list", "--json").json()) == 1


def test_ecs_rules_and_codes(api):
    server = api.serve()
    client = ecs_client(server.endpoint, api.key)
    disk_id = api.disks[0][0]
    create = lambda **kw: client.create_snapshot(ecs.CreateSnapshotRequest(**kw))
    assert error_of(lambda: create(disk_id=disk_id, snapshot_name="auto-mine")) == ("InvalidSnapshotName.Malformed", 400)
    assert error_of(lambda: create(disk_id=disk_id, snapshot_name="x")) == ("InvalidSnapshotName.Malformed", 400)
    assert error_of(lambda: create(disk_id=disk_id, snapshot_name="ok-name", description="http://x")) == ("InvalidDescription.Malformed", 400)
    assert error_of(lambda: create(disk_id="d-doesnotexist", snapshot_name="fine")) == ("InvalidDiskId.NotFound", 404)
    # A client names registered disks only, never a path on the server.
    assert error_of(lambda: create(disk_id=api.disks[0][1], snapshot_name="fine")) == ("InvalidDiskId.NotFound", 404)
    assert error_of(lambda: create(snapshot_name="fine")) == ("MissingParameter", 400)
    assert error_of(lambda: client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="cn-hangzhou"))) == ("InvalidRegionId.NotFound", 404)
    assert error_of(lambda: client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", page_size=101))) == ("InvalidParameter", 400)
    assert error_of(lambda: client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", snapshot_ids="s-1"))) == ("InvalidParameter", 400)
    assert api.ds.run("list", "--json").json() == []


def test_ecs_client_token_is_idempotent_across_restarts(api):
    server = api.serve()
    client = ecs_client(server.endpoint, api.key)
    disk_id = api.disks[0][0]
    request = lambda name: ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name=name, client_token="retry-7f3a")
    first = client.create_snapshot(request("tokened")).body.snapshot_id
    wait_accomplished(client, first)
    assert client.create_snapshot(request("tokened")).body.snapshot_id == first
    assert error_of(lambda: client.create_snapshot(request("other-name"))) == ("IdempotentParameterMismatch", 400)
    server.stop()
    again = api.serve()
    client = ecs_client(again.endpoint, api.key)
    assert client.create_snapshot(request("tokened")).body.snapshot_id == first
    assert len(api.ds.run("list", "--json").json()) == 1


def test_ecs_create_is_asynchronous_one_per_disk(api):
    gate = os.path.join(api.tmp, "gate")
    server = api.serve(env={"DISKSNAP_TEST_PAUSE": f"create-after-index:{gate}"})
    client = ecs_client(server.endpoint, api.key)
    disk_id = api.disks[0][0]
    started = time.time()
    first = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name="held")).body.snapshot_id
    # The answer came while the create waits at its pause point: it runs in the background.
    deadline = time.time() + 30
    while not os.path.exists(gate + ".reached") and time.time() < deadline:
        time.sleep(0.05)
    assert os.path.exists(gate + ".reached")
    snap = client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", snapshot_ids=json.dumps([first]))).body.snapshots.snapshot[0]
    assert snap.status == "progressing" and snap.available is False and snap.progress.endswith("%")
    assert error_of(lambda: client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name="second"))) == ("IncorrectDiskStatus.CreatingSnapshot", 403)
    assert error_of(lambda: client.delete_snapshot(ecs.DeleteSnapshotRequest(snapshot_id=first))) == ("IncorrectSnapshotStatus", 403)
    open(gate, "w").close()
    assert wait_accomplished(client, first).status == "accomplished"
    assert time.time() - started < 60
    # The disk is free again.
    second = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name="second")).body.snapshot_id
    assert wait_accomplished(client, second).status == "accomplished"


def test_signatures_refused(api):
    server = api.serve()
    describe = lambda c: c.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local"))
    for algorithm in (None, "v2"):
        assert error_of(lambda: describe(ecs_client(server.endpoint, api.key, algorithm, secret="not-the-secret"))) == ("SignatureDoesNotMatch", 400)
        assert error_of(lambda: describe(ecs_client(server.endpoint, api.key, algorithm, key_id="DSNOSUCHKEY000000000"))) == ("InvalidAccessKeyId.NotFound", 404)
    # A key removed while the server runs is refused from the next request on.
    second = api.ds.run("serve", "--new-key", "--json").json()
    assert describe(ecs_client(server.endpoint, second)).body.total_count == 0
    api.ds.run("serve", "--remove-key", second["AccessKeyId"])
    assert error_of(lambda: describe(ecs_client(server.endpoint, second))) == ("InvalidAccessKeyId.NotFound", 404)
    assert describe(ecs_client(server.endpoint, api.key)).body.total_count == 0


def test_tls_beyond_loopback(api, tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = api.serve(extra=["--listen", "0.0.0.0:0", "--tls-cert", cert, "--tls-key", key])
    assert server.scheme == "https"
    client = ecs_client(server.endpoint, api.key, protocol="https", ca=cert)
    made = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=api.disks[0][0], snapshot_name="over-tls")).body.snapshot_id
    assert wait_accomplished(client, made).status == "accomplished"
    # Plain HTTP to the TLS port gets no answer of ours.
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://{server.endpoint}/", timeout=10).read()
    bad = api.ds.run("serve", "--listen", "127.0.0.1:0", "--tls-cert", key, "--tls-key", key, "--json", check=False)
    assert bad.code == 2 and json.loads(bad.out)["Code"] == "Serve.TLSFiles"


def test_serve_refuses_unsafe_setups(api, tmp_path):
    result = api.ds.run("serve", "--listen", "0.0.0.0:8080", "--json", check=False)
    assert result.code == 2 and json.loads(result.out)["Code"] == "Serve.TLSRequired"
    result = api.ds.run("serve", "--listen", "0.0.0.0:8080", "--tls-cert", "/nonexistent", "--json", check=False)
    assert result.code == 2 and json.loads(result.out)["Code"] == "InvalidParameter.TLS"
    credentials = os.path.join(api.ds.repo, "api", "credentials.json")
    assert stat.S_IMODE(os.stat(credentials).st_mode) == 0o600
    os.chmod(credentials, 0o644)
    result = api.ds.run("serve", "--listen", "127.0.0.1:0", "--json", check=False)
    assert result.code != 0 and json.loads(result.out)["Code"] == "Credentials.Unsafe"


def rpc_request(endpoint, key, params, method="GET", nonce=None, timestamp=None, secret=None, body=None):
    """An RPC call signed here, independently of the SDKs (signature version 1.0, HMAC-SHA1),
    so that a test can replay it, age it or tamper with it."""
    import base64, hashlib, hmac, urllib.parse, uuid, datetime
    signed = dict({"Format": "JSON"}, **params, Version="2014-05-26", AccessKeyId=key["AccessKeyId"],
                  SignatureMethod="HMAC-SHA1", SignatureVersion="1.0", SignatureNonce=nonce or str(uuid.uuid4()),
                  Timestamp=timestamp or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    enc = lambda s: urllib.parse.quote(str(s), safe="~")
    canonical = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(signed.items()))
    to_sign = f"{method}&%2F&{enc(canonical)}"
    mac = hmac.new(((secret or key["AccessKeySecret"]) + "&").encode(), to_sign.encode(), hashlib.sha1)
    signed["Signature"] = base64.b64encode(mac.digest()).decode()
    return urllib.request.Request(f"http://{endpoint}/?" + urllib.parse.urlencode(signed, quote_via=urllib.parse.quote),
                                  method=method, data=body)


def send(request):
    """(HTTP status, JSON body) of a raw request."""
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, (json.loads(text) if text.startswith(b"{") else text)


def test_replayed_stale_tampered_and_unsigned_requests(api):
    server = api.serve()
    describe = {"Action": "DescribeSnapshots", "RegionId": "local"}
    status, body = send(rpc_request(server.endpoint, api.key, describe, nonce="nonce-once"))
    assert status == 200 and body["TotalCount"] == 0
    # The very same signed request again: refused, nothing runs.
    status, body = send(rpc_request(server.endpoint, api.key, describe, nonce="nonce-once"))
    assert (status, body["Code"]) == (400, "SignatureNonceUsed")
    status, body = send(rpc_request(server.endpoint, api.key, describe, timestamp="2020-01-01T00:00:00Z"))
    assert (status, body["Code"]) == (400, "InvalidTimeStamp.Expired")
    # A parameter changed after signing (a create turned to another disk).
    request = rpc_request(server.endpoint, api.key, {"Action": "CreateSnapshot", "DiskId": api.disks[0][0], "SnapshotName": "tamper"})
    request.full_url = request.full_url.replace(api.disks[0][0], api.disks[1][0])
    status, body = send(request)
    assert (status, body["Code"]) == (400, "SignatureDoesNotMatch")
    status, body = send(urllib.request.Request(f"http://{server.endpoint}/?Action=DescribeSnapshots&RegionId=local&Version=2014-05-26"))
    assert (status, body["Code"]) == (400, "IncompleteSignature")
    status, body = send(rpc_request(server.endpoint, api.key, {"Action": "NoSuchAction"}))
    assert (status, body["Code"]) == (404, "InvalidAction.NotFound")
    # A body over the bound is refused before anything reads it.
    status, _ = send(rpc_request(server.endpoint, api.key, describe, method="POST", body=b"x" * (2 << 20)))
    assert status == 413
    assert api.ds.run("list", "--json").json() == []


def test_slow_and_malformed_clients_do_not_hold_the_server(api):
    import socket
    server = api.serve(env={"DISKSNAP_SERVE_IDLE_SECONDS": "2"})
    host, port = server.endpoint.split(":")
    slow = [socket.create_connection((host, int(port))) for _ in range(20)]
    for s in slow:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    garbage = socket.create_connection((host, int(port)))
    garbage.sendall(b"\x00\x01 not http at all\r\n\r\n")
    flood = socket.create_connection((host, int(port)))
    flood.sendall(b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(200)) + b"\r\n")
    # Others are served meanwhile.
    client = ecs_client(server.endpoint, api.key)
    assert client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local")).body.total_count == 0
    for refused in (flood, garbage):
        refused.settimeout(10)
        assert refused.recv(100).startswith(b"HTTP/1.1 400 Bad Request\r\nConnection: close")
    # The idle connections are closed by the server (within the 2 s asked for here).
    time.sleep(3)
    for s in slow:
        s.settimeout(5)
        assert s.recv(1000) == b""
    assert client.describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local")).body.total_count == 0
    assert server.proc.poll() is None


def test_load_parallel_describes_and_creates(api, tmp_path):
    env = Env(tmp_path / "load", disks=4)
    try:
        server = env.serve()
        client = ecs_client(server.endpoint, env.key)
        latencies = []

        def describe(_):
            started = time.perf_counter()
            body = ecs_client(server.endpoint, env.key).describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local", page_size=100)).body
            latencies.append(time.perf_counter() - started)
            return body.total_count

        def create(i):
            disk_id = env.disks[i % 4][0]
            try:
                return ecs_client(server.endpoint, env.key).create_snapshot(ecs.CreateSnapshotRequest(
                    disk_id=disk_id, snapshot_name=f"load-{i}", client_token=f"load-token-{i}")).body.snapshot_id
            except Exception as e:
                return getattr(e, "code", repr(e))

        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            creates = pool.map(create, range(20))
            describes = list(pool.map(describe, range(200)))
        created = list(creates)
        assert len(describes) == 200
        accepted = [c for c in created if c.startswith("s-")]
        refused = [c for c in created if not c.startswith("s-")]
        # One creation per disk at a time: the only refusal allowed is that one.
        assert set(refused) <= {"IncorrectDiskStatus.CreatingSnapshot"}, refused
        assert len(accepted) >= 4
        for snapshot_id in accepted:
            assert wait_accomplished(client, snapshot_id).status == "accomplished"
        listed = {s["SnapshotId"] for s in env.ds.run("list", "--json").json()}
        assert listed == set(accepted)
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99) - 1]
        print(f"\nload: 200 DescribeSnapshots in parallel with 20 CreateSnapshot on 4 disks: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; {len(accepted)} creates accepted, {len(refused)} refused (disk busy)")
    finally:
        env.close()


def test_ecs_modify_and_usage(api):
    server = api.serve()
    client = ecs_client(server.endpoint, api.key)
    disk_id = api.disks[0][0]
    first = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name="before")).body.snapshot_id
    wait_accomplished(client, first)
    other = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name="taken")).body.snapshot_id
    wait_accomplished(client, other)
    client.modify_snapshot_attribute(ecs.ModifySnapshotAttributeRequest(snapshot_id=first, snapshot_name="after", description="renamed"))
    snap = wait_accomplished(client, first)
    assert (snap.snapshot_name, snap.description) == ("after", "renamed")
    assert api.ds.show(first)["SnapshotName"] == "after"
    modify = lambda **kw: client.modify_snapshot_attribute(ecs.ModifySnapshotAttributeRequest(snapshot_id=first, **kw))
    assert error_of(lambda: modify(snapshot_name="taken")) == ("InvalidSnapshotName.Duplicate", 400)
    assert error_of(lambda: modify(snapshot_name="auto-x")) == ("InvalidSnapshotName.Malformed", 400)
    assert error_of(lambda: client.modify_snapshot_attribute(ecs.ModifySnapshotAttributeRequest(snapshot_id="s-nosuchsnapshot0000", snapshot_name="x1"))) == ("InvalidSnapshotId.NotFound", 404)
    # The CLI takes the same path.
    assert api.ds.run("modify", first, "--name", "taken", check=False).code == 2
    api.ds.run("modify", first, "--description", "")
    assert api.ds.show(first)["Description"] == ""
    usage = client.describe_snapshots_usage(ecs.DescribeSnapshotsUsageRequest(region_id="local")).body
    assert usage.snapshot_count == 2
    stored = sum(api.ds.show(s)["BytesStoredNew"] for s in (first, other))
    assert usage.snapshot_size == stored and stored > 0


def test_legacy_sdk_and_xml(api):
    from aliyunsdkcore.acs_exception.exceptions import ServerException
    from aliyunsdkecs.request.v20140526.CreateSnapshotRequest import CreateSnapshotRequest
    from aliyunsdkecs.request.v20140526.DescribeSnapshotsRequest import DescribeSnapshotsRequest
    from aliyunsdkecs.request.v20140526.DeleteSnapshotRequest import DeleteSnapshotRequest
    from api_clients import legacy_call
    server = api.serve()
    create = CreateSnapshotRequest()
    create.set_DiskId(api.disks[0][0])
    create.set_SnapshotName("legacy-1")
    create.set_Tags([{"Key": "via", "Value": "legacy"}])
    snapshot_id = legacy_call(server.endpoint, api.key, create)["SnapshotId"]
    snap = wait_accomplished(ecs_client(server.endpoint, api.key), snapshot_id)
    assert [(t.tag_key, t.tag_value) for t in snap.tags.tag] == [("via", "legacy")]
    describe = DescribeSnapshotsRequest()
    describe.set_SnapshotIds(json.dumps([snapshot_id]))
    listed = legacy_call(server.endpoint, api.key, describe)
    assert listed["TotalCount"] == 1 and listed["Snapshots"]["Snapshot"][0]["Status"] == "accomplished"
    with pytest.raises(ServerException) as caught:
        legacy_call(server.endpoint, api.key, describe, secret="wrong")
    # The server's string to sign is the SDK's own, so the SDK can say the secret is wrong.
    assert (caught.value.get_error_code(), caught.value.get_http_status()) == ("InvalidAccessKeySecret", 400)
    delete = DeleteSnapshotRequest()
    delete.set_SnapshotId(snapshot_id)
    legacy_call(server.endpoint, api.key, delete)
    with pytest.raises(ServerException) as caught:
        legacy_call(server.endpoint, api.key, delete)
    assert (caught.value.get_error_code(), caught.value.get_http_status()) == ("InvalidSnapshotId.NotFound", 404)
    # This version of the legacy core always sends Format=JSON; a client that asks XML gets it,
    # errors included.
    import xml.etree.ElementTree as ET
    request = rpc_request(server.endpoint, api.key, {"Action": "DescribeSnapshots", "RegionId": "local", "Format": "XML"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["Content-Type"].startswith("text/xml")
        root = ET.fromstring(answer.read())
    assert root.tag == "DescribeSnapshotsResponse" and root.find("TotalCount").text == "0"
    request = rpc_request(server.endpoint, api.key, {"Action": "DeleteSnapshot", "SnapshotId": snapshot_id, "Format": "XML"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    root = ET.fromstring(caught.value.read())
    assert root.tag == "Error" and root.find("Code").text == "InvalidSnapshotId.NotFound"


def wait_disk_settled(client, disk_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        disk = client.describe_disks(ecs.DescribeDisksRequest(region_id="local", disk_ids=json.dumps([disk_id]))).body.disks.disk[0]
        if disk.status != "ReIniting":
            return disk
        time.sleep(0.2)
    raise AssertionError(f"{disk_id} still ReIniting after {timeout} s")


def test_ecs_reset_disk_rolls_back_in_place(api):
    server = api.serve()
    client = ecs_client(server.endpoint, api.key)
    disk_id, image = api.disks[0]
    before = sha256(image)
    snapshot_id = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=disk_id, snapshot_name="good")).body.snapshot_id
    wait_accomplished(client, snapshot_id)
    other = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=api.disks[1][0], snapshot_name="other")).body.snapshot_id
    wait_accomplished(client, other)
    # A mistake: the disk's blocks overwritten.
    with open(image, "r+b") as f:
        f.seek(1 << 20)
        f.write(os.urandom(4 << 20))
    assert sha256(image) != before
    reset = lambda **kw: client.reset_disk(ecs.ResetDiskRequest(**kw))
    assert error_of(lambda: reset(disk_id=disk_id, snapshot_id=snapshot_id, dry_run=True)) == ("DryRunOperation", 400)
    assert error_of(lambda: reset(disk_id=disk_id, snapshot_id=other)) == ("InvalidSnapshotId.NotFound", 404)
    assert error_of(lambda: reset(disk_id="d-nosuchdisk00000000", snapshot_id=snapshot_id)) == ("InvalidDiskId.NotFound", 404)
    # A disk in use (here: backing a loop device) is not written.
    loop = subprocess.run(["losetup", "-f", "--show", image], check=True, capture_output=True, text=True).stdout.strip()
    try:
        assert error_of(lambda: reset(disk_id=disk_id, snapshot_id=snapshot_id)) == ("IncorrectInstanceStatus", 403)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    assert sha256(image) != before
    reset(disk_id=disk_id, snapshot_id=snapshot_id)
    disk = wait_disk_settled(client, disk_id)
    assert disk.status == "In_use" and disk.operation_locks.operation_lock == []
    assert sha256(image) == before
    subprocess.run(["e2fsck", "-fn", image], check=True, capture_output=True)


@pytest.mark.parametrize("algorithm", [None, "v2"])
def test_swas_snapshots_and_quota(tmp_path, algorithm):
    from alibabacloud_swas_open20200601 import models as swas
    from api_clients import alibaba_client
    env = Env(tmp_path, disks=2, profile="swas")
    try:
        server = env.serve()
        client = alibaba_client("alibabacloud_swas_open20200601", server.endpoint, env.key, algorithm)
        disk_id, image = env.disks[0]
        made = []
        for i in range(2):
            made.append(client.create_snapshot(swas.CreateSnapshotRequest(
                region_id="local", disk_id=disk_id, snapshot_name=f"swas-{i}", client_token=f"t-{i}",
                tag=[swas.CreateSnapshotRequestTag(key="n", value=str(i))])).body.snapshot_id)
            wait_accomplished(ecs_client(server.endpoint, env.key), made[-1])
        made.append(client.create_snapshot(swas.CreateSnapshotRequest(region_id="local", disk_id=env.disks[1][0], snapshot_name="swas-data")).body.snapshot_id)
        wait_accomplished(ecs_client(server.endpoint, env.key), made[-1])
        # Three per server (instance): the fourth is refused with the document's code.
        assert error_of(lambda: client.create_snapshot(swas.CreateSnapshotRequest(region_id="local", disk_id=disk_id, snapshot_name="swas-4"))) == ("SnapshotLimitExceed", 403)
        listed = client.list_snapshots(swas.ListSnapshotsRequest(region_id="local", instance_id="i-one", page_size=2)).body
        assert listed.total_count == 3 and len(listed.snapshots) == 2 and listed.page_size == 2
        assert all(s.status == "Accomplished" and s.instance_id == "i-one" for s in listed.snapshots)
        by_ids = client.list_snapshots(swas.ListSnapshotsRequest(region_id="local", snapshot_ids=json.dumps(made[:2]))).body.snapshots
        assert sorted(s.snapshot_id for s in by_ids) == sorted(made[:2])
        assert sorted((t.key, t.value) for s in by_ids for t in s.tags) == [("n", "0"), ("n", "1")]
        disks = client.list_disks(swas.ListDisksRequest(region_id="local", instance_id="i-one")).body
        assert disks.total_count == 2 and {d.disk_type for d in disks.disks} == {"system", "data"}
        client.update_snapshot_attribute(swas.UpdateSnapshotAttributeRequest(region_id="local", snapshot_id=made[0], remark="kept"))
        assert env.ds.show(made[0])["Description"] == "kept"
        # Roll the system disk back.
        before = sha256(image)
        with open(image, "r+b") as f:
            f.seek(1 << 20)
            f.write(os.urandom(1 << 20))
        client.reset_disk(swas.ResetDiskRequest(region_id="local", disk_id=disk_id, snapshot_id=made[1]))
        wait_until(lambda: client.list_disks(swas.ListDisksRequest(region_id="local", disk_ids=json.dumps([disk_id]))).body.disks[0].status != "ReIniting")
        assert sha256(image) == before
        client.delete_snapshots(swas.DeleteSnapshotsRequest(region_id="local", snapshot_ids=json.dumps(made[:2])))
        client.delete_snapshot(swas.DeleteSnapshotRequest(region_id="local", snapshot_id=made[2]))
        assert client.list_snapshots(swas.ListSnapshotsRequest(region_id="local")).body.total_count == 0
        assert error_of(lambda: client.delete_snapshot(swas.DeleteSnapshotRequest(region_id="local", snapshot_id=made[2]))) == ("InvalidSnapshotId.NotFound", 404)
    finally:
        env.close()


def test_swas_legacy_sdk(tmp_path):
    from aliyunsdkcore.acs_exception.exceptions import ServerException
    from aliyunsdkswas_open.request.v20200601.CreateSnapshotRequest import CreateSnapshotRequest
    from aliyunsdkswas_open.request.v20200601.ListSnapshotsRequest import ListSnapshotsRequest
    from api_clients import legacy_call
    env = Env(tmp_path, disks=1, profile="swas")
    try:
        server = env.serve()
        create = CreateSnapshotRequest()
        create.set_DiskId(env.disks[0][0])
        create.set_SnapshotName("legacy-swas")
        snapshot_id = legacy_call(server.endpoint, env.key, create)["SnapshotId"]
        wait_accomplished(ecs_client(server.endpoint, env.key), snapshot_id)
        listed = legacy_call(server.endpoint, env.key, ListSnapshotsRequest())
        assert listed["TotalCount"] == 1 and listed["Snapshots"][0]["SnapshotId"] == snapshot_id
        bad = CreateSnapshotRequest()
        bad.set_DiskId(env.disks[0][0])
        bad.set_SnapshotName("1-starts-with-a-digit")
        with pytest.raises(ServerException) as caught:
            legacy_call(server.endpoint, env.key, bad)
        assert (caught.value.get_error_code(), caught.value.get_http_status()) == ("InvalidSnapshotName.ValueNotSupported", 400)
    finally:
        env.close()


def test_ecd_desktop_snapshots(tmp_path):
    from alibabacloud_ecd20200930 import models as ecd
    from api_clients import alibaba_client
    env = Env(tmp_path, disks=2, profile="wuying")
    try:
        server = env.serve()
        client = alibaba_client("alibabacloud_ecd20200930", server.endpoint, env.key)
        made = {}
        for kind in ("system", "data"):
            made[kind] = client.create_snapshot(ecd.CreateSnapshotRequest(
                region_id="local", desktop_id="i-one", source_disk_type=kind, snapshot_name=f"desk-{kind}", description=kind)).body.snapshot_id
            wait_accomplished(ecs_client(server.endpoint, env.key), made[kind])
        assert env.ds.show(made["system"])["SourceDiskId"] == env.disks[0][0]
        assert env.ds.show(made["data"])["SourceDiskId"] == env.disks[1][0]
        listed = client.describe_snapshots(ecd.DescribeSnapshotsRequest(region_id="local", desktop_id="i-one", max_results=1)).body
        assert len(listed.snapshots) == 1 and listed.next_token == "1"
        rest = client.describe_snapshots(ecd.DescribeSnapshotsRequest(region_id="local", desktop_id="i-one", next_token=listed.next_token)).body
        assert rest.next_token == "" and {s.snapshot_id for s in listed.snapshots + rest.snapshots} == set(made.values())
        system = client.describe_snapshots(ecd.DescribeSnapshotsRequest(region_id="local", source_disk_type="SYSTEM")).body.snapshots
        assert [(s.snapshot_id, s.status, s.source_disk_type, s.desktop_id) for s in system] == [(made["system"], "ACCOMPLISHED", "SYSTEM", "i-one")]
        create = lambda **kw: client.create_snapshot(ecd.CreateSnapshotRequest(region_id="local", snapshot_name="desk-x", **kw))
        assert error_of(lambda: create(desktop_id="ecd-none", source_disk_type="system")) == ("InvalidDesktopId.NotFound", 404)
        assert error_of(lambda: create(desktop_id="i-one", source_disk_type="swap")) == ("InvalidParameter", 400)
        assert error_of(lambda: client.describe_snapshots(ecd.DescribeSnapshotsRequest())) == ("MissingParameter", 400)
        image = env.disks[1][1]
        before = sha256(image)
        with open(image, "r+b") as f:
            f.seek(1 << 20)
            f.write(os.urandom(1 << 20))
        client.reset_snapshot(ecd.ResetSnapshotRequest(region_id="local", snapshot_id=made["data"], stop_desktop=True))
        wait_until(lambda: sha256(image) == before)
        client.delete_snapshot(ecd.DeleteSnapshotRequest(region_id="local", snapshot_id=list(made.values())))
        assert client.describe_snapshots(ecd.DescribeSnapshotsRequest(region_id="local")).body.snapshots == []
    finally:
        env.close()


def test_ecs_automatic_snapshot_policies_run_by_the_server(api):
    # A schedule hour lasts 2 s here (DISKSNAP_SERVE_HOUR_SECONDS), so time points come fast.
    server = api.serve(env={"DISKSNAP_SERVE_HOUR_SECONDS": "2"})
    client = ecs_client(server.endpoint, api.key)
    disk_id, other = api.disks[0][0], api.disks[1][0]
    create = lambda **kw: client.create_auto_snapshot_policy(ecs.CreateAutoSnapshotPolicyRequest(region_id="local", **kw))
    every_hour = json.dumps([str(h) for h in range(24)])
    every_day = json.dumps([str(d) for d in range(1, 8)])
    assert error_of(lambda: create(auto_snapshot_policy_name="p1", time_points='["24"]', repeat_weekdays=every_day, retention_days=7)) == ("InvalidTimePoints.Malformed", 400)
    assert error_of(lambda: create(auto_snapshot_policy_name="p1", time_points=every_hour, repeat_weekdays='["0"]', retention_days=7)) == ("InvalidRepeatWeekdays.Malformed", 400)
    assert error_of(lambda: create(auto_snapshot_policy_name="p1", time_points=every_hour, repeat_weekdays=every_day, retention_days=0)) == ("InvalidRetentionDays.Malformed", 400)
    policy_id = create(auto_snapshot_policy_name="hourly", time_points=every_hour, repeat_weekdays=every_day, retention_days=-1).body.auto_snapshot_policy_id
    client.apply_auto_snapshot_policy(ecs.ApplyAutoSnapshotPolicyRequest(region_id="local", auto_snapshot_policy_id=policy_id, disk_ids=json.dumps([disk_id])))
    described = client.describe_auto_snapshot_policy_ex(ecs.DescribeAutoSnapshotPolicyExRequest(region_id="local")).body.auto_snapshot_policies.auto_snapshot_policy
    assert [(p.auto_snapshot_policy_id, p.auto_snapshot_policy_name, p.disk_nums, p.retention_days) for p in described] == [(policy_id, "hourly", 1, -1)]
    assert json.loads(described[0].time_points) == [str(h) for h in range(24)]
    disk = client.describe_disks(ecs.DescribeDisksRequest(region_id="local", disk_ids=json.dumps([disk_id]))).body.disks.disk[0]
    assert disk.auto_snapshot_policy_id == policy_id and disk.enable_auto_snapshot is True

    def automatic(disk):
        return [s for s in client.describe_snapshots(ecs.DescribeSnapshotsRequest(
            region_id="local", disk_id=disk, snapshot_type="auto", page_size=100)).body.snapshots.snapshot]
    deadline = time.time() + 60
    while len([s for s in automatic(disk_id) if s.status == "accomplished"]) < 2:
        assert time.time() < deadline, "the policy made no automatic snapshots"
        time.sleep(0.5)
    assert automatic(other) == []
    assert all(s.snapshot_name.startswith("auto-") for s in automatic(disk_id))
    # Cancelled: no more; the policy itself stays, and outlives a restart of the server.
    client.cancel_auto_snapshot_policy(ecs.CancelAutoSnapshotPolicyRequest(region_id="local", auto_snapshot_policy_id=policy_id, disk_ids=json.dumps([disk_id])))
    time.sleep(1)
    settled = len(automatic(disk_id))
    time.sleep(3)
    assert len(automatic(disk_id)) == settled
    server.stop()
    client = ecs_client(api.serve(env={"DISKSNAP_SERVE_HOUR_SECONDS": "2"}).endpoint, api.key)
    again = client.describe_auto_snapshot_policy_ex(ecs.DescribeAutoSnapshotPolicyExRequest(region_id="local", auto_snapshot_policy_id=policy_id)).body
    assert again.total_count == 1 and again.auto_snapshot_policies.auto_snapshot_policy[0].disk_nums == 0
    client.delete_auto_snapshot_policy(ecs.DeleteAutoSnapshotPolicyRequest(region_id="local", auto_snapshot_policy_id=policy_id))
    assert error_of(lambda: client.delete_auto_snapshot_policy(ecs.DeleteAutoSnapshotPolicyRequest(region_id="local", auto_snapshot_policy_id=policy_id))) == ("InvalidAutoSnapshotPolicyId.NotFound", 404)


def test_css_cluster_snapshots_through_the_huawei_sdk(tmp_path):
    from huaweicloudsdkcss.v1 import (CreateSnapshotRequest, CreateSnapshotReq, ListSnapshotsRequest, DeleteSnapshotRequest,
                                      RestoreSnapshotRequest, RestoreSnapshotReq)
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from api_clients import css_client
    env = Env(tmp_path, disks=2, profile="css")
    try:
        server = env.serve()
        client = css_client(server.endpoint, env.key)
        made = client.create_snapshot(CreateSnapshotRequest(cluster_id="i-one", body=CreateSnapshotReq(name="cluster-snap-1", description="both disks"))).backup
        assert made.id.startswith("g-") and made.name == "cluster-snap-1"
        deadline = time.time() + 60
        while True:
            backups = client.list_snapshots(ListSnapshotsRequest(cluster_id="i-one")).backups
            assert len(backups) == 1
            if backups[0].status != "BUILDING":
                break
            assert time.time() < deadline
            time.sleep(0.2)
        backup = backups[0]
        assert (backup.id, backup.status, backup.total_shards, backup.failed_shards, backup.cluster_id) == (made.id, "COMPLETED", 2, 0, "i-one")
        # One group: a snapshot of every disk of the instance, each with the group's id.
        members = [s for s in env.ds.run("list", "--json").json()]
        assert sorted(s["SourceDiskId"] for s in members) == sorted(d for d, _ in env.disks)
        assert {s["GroupId"] for s in members} == {made.id}

        def refused(call):
            with pytest.raises(ClientRequestException) as caught:
                call()
            return caught.value.error_code, caught.value.status_code
        # The css profile: names 4-64 characters, unique ignoring case.
        assert refused(lambda: client.create_snapshot(CreateSnapshotRequest(cluster_id="i-one", body=CreateSnapshotReq(name="abc")))) == ("InvalidSnapshotName.Malformed", 400)
        assert refused(lambda: client.create_snapshot(CreateSnapshotRequest(cluster_id="i-one", body=CreateSnapshotReq(name="CLUSTER-SNAP-1")))) == ("InvalidSnapshotName.Duplicate", 400)
        assert refused(lambda: client.list_snapshots(ListSnapshotsRequest(cluster_id="no-such-cluster"))) == ("CSS.0015", 404)
        assert refused(lambda: css_client(server.endpoint, env.key, project_id="other").list_snapshots(ListSnapshotsRequest(cluster_id="i-one"))) == ("APIGW.0101", 404)
        assert refused(lambda: css_client(server.endpoint, env.key, secret="wrong").list_snapshots(ListSnapshotsRequest(cluster_id="i-one"))) == ("APIGW.0301", 401)
        # Both disks rolled back together.
        before = [sha256(image) for _, image in env.disks]
        for _, image in env.disks:
            with open(image, "r+b") as f:
                f.seek(1 << 20)
                f.write(os.urandom(1 << 20))
        assert refused(lambda: client.restore_snapshot(RestoreSnapshotRequest(cluster_id="i-one", snapshot_id=made.id, body=RestoreSnapshotReq(target_cluster="another", indices="*")))) == ("CSS.0001", 400)
        client.restore_snapshot(RestoreSnapshotRequest(cluster_id="i-one", snapshot_id=made.id, body=RestoreSnapshotReq(target_cluster="i-one", indices="*")))
        wait_until(lambda: [sha256(image) for _, image in env.disks] == before)
        delete = DeleteSnapshotRequest(cluster_id="i-one", snapshot_id=made.id)
        client.delete_snapshot(delete)
        assert client.list_snapshots(ListSnapshotsRequest(cluster_id="i-one")).backups == []
        assert env.ds.run("list", "--json").json() == []
        # The scheme has no nonce: the same signed write again (same second, same signature)
        # is a replay; signed anew a second later, it is a request like any other.
        time.sleep(1.1)
        assert refused(lambda: client.delete_snapshot(delete)) == ("CSS.0015", 404)
    finally:
        env.close()


def test_css_group_is_all_or_nothing(tmp_path):
    """A disk of the cluster already being snapshotted: the group is refused, and no member
    of it is left behind."""
    from huaweicloudsdkcss.v1 import CreateSnapshotRequest, CreateSnapshotReq
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    from api_clients import css_client
    env = Env(tmp_path, disks=2, profile="css")
    try:
        gate = os.path.join(str(tmp_path), "gate")
        server = env.serve(env={"DISKSNAP_TEST_PAUSE": f"create-after-index:{gate}"})
        held = ecs_client(server.endpoint, env.key).create_snapshot(ecs.CreateSnapshotRequest(disk_id=env.disks[1][0], snapshot_name="held-data")).body.snapshot_id
        client = css_client(server.endpoint, env.key)
        with pytest.raises(ClientRequestException) as caught:
            client.create_snapshot(CreateSnapshotRequest(cluster_id="i-one", body=CreateSnapshotReq(name="whole-cluster")))
        assert (caught.value.error_code, caught.value.status_code) == ("IncorrectDiskStatus.CreatingSnapshot", 403)
        open(gate, "w").close()
        wait_accomplished(ecs_client(server.endpoint, env.key), held)
        assert [s["SnapshotName"] for s in env.ds.run("list", "--json").json()] == ["held-data"]
    finally:
        env.close()


def huawei_request(endpoint, key, method, path, body=b"", date=None):
    """A request signed here with SDK-HMAC-SHA256, independently of the SDK, so a test can
    replay or age it."""
    import datetime, hashlib, hmac, urllib.parse
    date = date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {"content-type": "application/json", "host": endpoint, "x-sdk-date": date}
    canonical_path = "/".join(urllib.parse.quote(p, safe="~") for p in urllib.parse.unquote(path).split("/"))
    canonical_path += "" if canonical_path.endswith("/") else "/"
    signed = ";".join(sorted(headers))
    canonical = "\n".join([method, canonical_path, "", "".join(f"{h}:{headers[h]}\n" for h in sorted(headers)), signed,
                           hashlib.sha256(body).hexdigest()])
    to_sign = f"SDK-HMAC-SHA256\n{date}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(key["AccessKeySecret"].encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(f"http://{endpoint}{path}", data=body or None, method=method,
                                     headers={"Content-Type": "application/json", "X-Sdk-Date": date,
                                              "Authorization": f"SDK-HMAC-SHA256 Access={key['AccessKeyId']}, SignedHeaders={signed}, Signature={signature}"})
    return request


def test_css_replayed_and_stale_requests(tmp_path):
    env = Env(tmp_path, disks=1, profile="css")
    try:
        server = env.serve()
        path = "/v1.0/local/clusters/i-one/index_snapshot"
        body = json.dumps({"name": "signed-here"}).encode()
        request = huawei_request(server.endpoint, env.key, "POST", path, body)
        status, answer = send(request)
        assert status == 200 and answer["backup"]["name"] == "signed-here"
        status, answer = send(huawei_request(server.endpoint, env.key, "POST", path, body, date=request.headers["X-sdk-date"]))
        assert (status, answer["error_code"]) == (400, "SignatureNonceUsed")
        status, answer = send(huawei_request(server.endpoint, env.key, "GET", "/v1.0/local/clusters/i-one/index_snapshots", date="20200101T000000Z"))
        assert (status, answer["error_code"]) == (400, "InvalidTimeStamp.Expired")
        status, answer = send(urllib.request.Request(f"http://{server.endpoint}/v1.0/local/clusters/i-one/index_snapshots"))
        assert (status, answer["error_code"]) == (401, "APIGW.0301")
        tampered = huawei_request(server.endpoint, env.key, "POST", path, body)
        tampered.data = json.dumps({"name": "changed-on-the-way"}).encode()
        status, answer = send(tampered)
        assert (status, answer["error_code"]) == (401, "APIGW.0301")
        assert [s["SnapshotName"] for s in env.ds.run("list", "--json").json()] == ["signed-here"]
    finally:
        env.close()


def test_rate_bounded_per_key(api):
    server = api.serve(env={"DISKSNAP_SERVE_RATE": "2"})  # 2 a second, bursts of 10
    describe = {"Action": "DescribeSnapshots", "RegionId": "local"}
    codes = [send(rpc_request(server.endpoint, api.key, describe))[1].get("Code") for _ in range(20)]
    assert codes[:10] == [None] * 10 and "Throttling.User" in codes[10:]
    # Another key is not held back by the first one's calls.
    other = api.ds.run("serve", "--new-key", "--json").json()
    assert send(rpc_request(server.endpoint, other, describe))[0] == 200
    time.sleep(1.1)
    assert send(rpc_request(server.endpoint, api.key, describe))[0] == 200


def test_one_server_several_repositories_by_profile(tmp_path):
    from alibabacloud_swas_open20200601 import models as swas
    from api_clients import alibaba_client, css_client
    from huaweicloudsdkcss.v1 import ListSnapshotsRequest
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
    ecs_env = Env(tmp_path / "ecs", disks=1, profile="ecs")
    swas_env = Env(tmp_path / "swas", disks=1, profile="swas")
    try:
        server = ecs_env.serve(extra=["--also-repo", swas_env.ds.repo])
        ecs_api = ecs_client(server.endpoint, ecs_env.key)
        swas_api = alibaba_client("alibabacloud_swas_open20200601", server.endpoint, swas_env.key)
        made = ecs_api.create_snapshot(ecs.CreateSnapshotRequest(disk_id=ecs_env.disks[0][0], snapshot_name="in-ecs")).body.snapshot_id
        wait_accomplished(ecs_api, made)
        swas_made = swas_api.create_snapshot(swas.CreateSnapshotRequest(region_id="local", disk_id=swas_env.disks[0][0], snapshot_name="in-swas")).body.snapshot_id
        wait_until(lambda: swas_api.list_snapshots(swas.ListSnapshotsRequest(region_id="local")).body.snapshots[0].status == "Accomplished")
        assert [s["SnapshotId"] for s in ecs_env.ds.run("list", "--json").json()] == [made]
        assert [s["SnapshotId"] for s in swas_env.ds.run("list", "--json").json()] == [swas_made]
        # Each repository has its own keys: the SWAS key means nothing to the ECS repository.
        assert error_of(lambda: ecs_client(server.endpoint, swas_env.key).describe_snapshots(ecs.DescribeSnapshotsRequest(region_id="local"))) == ("InvalidAccessKeyId.NotFound", 404)
        with pytest.raises(ClientRequestException) as caught:
            css_client(server.endpoint, ecs_env.key).list_snapshots(ListSnapshotsRequest(cluster_id="i-one"))
        assert (caught.value.error_code, caught.value.status_code) == ("APIGW.0101", 404)
        twice = ecs_env.ds.run("serve", "--listen", "127.0.0.1:0", "--also-repo", ecs_env.ds.repo, "--json", check=False)
        assert twice.code == 2 and json.loads(twice.out)["Code"] == "InvalidParameter.Repository"
    finally:
        ecs_env.close()
        swas_env.close()


def test_stopping_the_server_finishes_what_it_admitted(api):
    import signal
    gate = os.path.join(api.tmp, "gate")
    server = api.serve(env={"DISKSNAP_TEST_PAUSE": f"create-after-index:{gate}"})
    client = ecs_client(server.endpoint, api.key)
    made = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=api.disks[0][0], snapshot_name="answered")).body.snapshot_id
    wait_until(lambda: os.path.exists(gate + ".reached"))
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert server.proc.poll() is None, "the server quit with an answered create still running"
    open(gate, "w").close()
    assert server.proc.wait(timeout=60) == 0
    assert api.ds.show(made)["Status"] == "accomplished"
    # kill -9 cannot wait: the answered create reads as failed, nothing else is lost.
    os.remove(gate)
    os.remove(gate + ".reached")
    server = api.serve(env={"DISKSNAP_TEST_PAUSE": f"create-after-index:{gate}"})
    client = ecs_client(server.endpoint, api.key)
    killed = client.create_snapshot(ecs.CreateSnapshotRequest(disk_id=api.disks[0][0], snapshot_name="killed")).body.snapshot_id
    wait_until(lambda: os.path.exists(gate + ".reached"))
    server.proc.kill()
    server.proc.wait()
    assert api.ds.show(killed)["Status"] == "failed"
    assert api.ds.show(made)["Status"] == "accomplished"
    api.ds.run("check", "--read-data")

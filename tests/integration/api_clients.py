"""The official cloud SDKs, unmodified, as clients of `disksnap serve` (tests/integration/test_api.py).

They live in a virtualenv of their own (tools/install-deps makes it with the same python3), whose
site-packages are added here, so the tests call them in-process."""
import glob
import json
import os
import re
import site
import subprocess
import time

SDK_VENV = os.environ.get("DISKSNAP_SDK_VENV", "/var/cache/disksnap/sdk-venv")
_paths = glob.glob(os.path.join(SDK_VENV, "lib", "python3*", "site-packages"))
if not _paths:
    raise RuntimeError(f"no SDK virtualenv at {SDK_VENV}: run tools/install-deps")
site.addsitedir(_paths[0])

from alibabacloud_tea_openapi.models import Config  # noqa: E402
from alibabacloud_ecs20140526.client import Client as EcsClient  # noqa: E402
from alibabacloud_ecs20140526 import models as ecs  # noqa: E402


class Server:
    """`disksnap serve` on a free loopback port, stopped at the end."""

    def __init__(self, bin_path, repo, env=None, extra=()):
        self.repo = repo
        self.proc = subprocess.Popen([bin_path, "--repo", repo, "serve", "--listen", "127.0.0.1:0", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.endpoint = None
        deadline = time.time() + 30
        seen = []
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(r"on (https?)://([0-9.]+):([0-9]+)", line)
            if found:
                self.scheme = found.group(1)
                host = "127.0.0.1" if found.group(2) == "0.0.0.0" else found.group(2)
                self.endpoint = f"{host}:{found.group(3)}"
                break
        if self.endpoint is None:
            self.proc.kill()
            raise AssertionError("disksnap serve did not start: " + "".join(seen) + self.proc.stderr.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def ecs_client(endpoint, key, algorithm=None, secret=None, key_id=None, protocol="http", ca=None):
    """alibabacloud-ecs20140526: ACS3-HMAC-SHA256 by default, RPC HMAC-SHA1 with algorithm="v2"."""
    config = Config(access_key_id=key_id or key["AccessKeyId"], access_key_secret=secret or key["AccessKeySecret"],
                    endpoint=endpoint, protocol=protocol, region_id="local")
    if algorithm:
        config.signature_algorithm = algorithm
    if ca:
        config.ca = ca
    return EcsClient(config)


def wait_accomplished(client, snapshot_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = client.describe_snapshots(ecs.DescribeSnapshotsRequest(
            region_id="local", snapshot_ids=json.dumps([snapshot_id]))).body.snapshots.snapshot
        assert len(found) == 1, found
        if found[0].status != "progressing":
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"{snapshot_id} still progressing after {timeout} s")


def legacy_call(endpoint, key, request, secret=None):
    """aliyun-python-sdk-core's AcsClient (RPC, HMAC-SHA1 `Signature=`): the answer as JSON,
    or the SDK's ServerException."""
    from aliyunsdkcore.client import AcsClient
    client = AcsClient(key["AccessKeyId"], secret or key["AccessKeySecret"], "local", auto_retry=False)
    request.set_endpoint(endpoint)
    request.set_protocol_type("http")
    return json.loads(client.do_action_with_exception(request))


def alibaba_client(module, endpoint, key, algorithm=None):
    """A tea client of another product (alibabacloud_swas_open20200601, alibabacloud_ecd20200930)."""
    import importlib
    client_class = importlib.import_module(module + ".client").Client
    config = Config(access_key_id=key["AccessKeyId"], access_key_secret=key["AccessKeySecret"],
                    endpoint=endpoint, protocol="http", region_id="local")
    if algorithm:
        config.signature_algorithm = algorithm
    return client_class(config)


def css_client(endpoint, key, project_id="local", secret=None):
    """huaweicloudsdkcss v1 (SDK-HMAC-SHA256), with the project id given: the SDK then asks
    IAM nothing."""
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.region.region import Region
    from huaweicloudsdkcore.http.http_config import HttpConfig
    from huaweicloudsdkcss.v1 import CssClient
    return (CssClient.new_builder()
            .with_http_config(HttpConfig.get_default_config())
            .with_credentials(BasicCredentials(key["AccessKeyId"], secret or key["AccessKeySecret"], project_id))
            .with_region(Region("local", f"http://{endpoint}"))
            .build())

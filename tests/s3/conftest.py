"""One real S3 API server per test session: moto's server mode on 127.0.0.1, with signed requests.

The server starts with authentication on (after the few unauthenticated calls that create an IAM
user with an access key), so a wrong key is refused as AWS would refuse it. Tests get the endpoint and
the key pair; the secret is random per session, so a grep for it over a run's files is meaningful.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# moto counts requests: these first ones (create user, attach policy, create key) need no signature.
_BOOTSTRAP_CALLS = 3
_STARTUP_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The AWS chain's variables for a child process (and for boto3 clients in tests)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self, key_id: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=key_id or self.key_id,
            aws_secret_access_key=secret or self.secret,
        )

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> int:
        client = self.client()
        count = 0
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
                count += 1
        return count

    def make_bucket(self, bucket: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass


def _wait_ready(endpoint: str, proc: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.time() + _STARTUP_TIMEOUT_S
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto_server did not answer on {endpoint} within {_STARTUP_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_BOOTSTRAP_CALLS + 1)}
    moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    with open(log, "wb") as out:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                env=env)
    try:
        _wait_ready(endpoint, proc)  # the readiness probe is the first unauthenticated call
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="kontext")
        iam.put_user_policy(
            UserName="kontext",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
            ),
        )
        key = iam.create_access_key(UserName="kontext")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

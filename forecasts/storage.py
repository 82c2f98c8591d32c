"""Object storage for the forecast jobs' `type: "obs"` locations: buckets of keyed objects.

Two backends keep one contract (tests/forecasts/test_storage.py runs the same tests against both):

- `FileSystemStore`, the default: a bucket is a folder `DATA_DIR/obs/<bucket>/` and a key a path below
  it, so an operator can drop input files in with `cp`. Folders are created owner-only (0700) and
  files 0600, as everything else under DATA_DIR.
- `S3Store`: any S3-compatible service through boto3 (Huawei OBS, MinIO, SeaweedFS, AWS), chosen by
  setting `OBS_ENDPOINT`.

Bucket names follow S3's rules and keys are checked before either backend sees them: on the
filesystem a key is a path, and `../`, an absolute path or a NUL would reach outside DATA_DIR/obs
(tests/security/test_storage_attacks.py). The same rules hold for S3 so that a location valid on one
backend is valid on the other.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MAX_KEY_BYTES = 1024  # S3's limit
# S3 bucket naming rules (general purpose buckets): 3-63 characters of lowercase letters, digits, dots
# and hyphens, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Temporary files of atomic writes live beside the buckets, in a folder no valid bucket name can take.
_TMP_DIR = ".tmp"


class StorageError(Exception):
    """A storage operation failed; the message is fit to show an operator."""


class InvalidName(StorageError, ValueError):
    """A bucket name or key that breaks the naming rules."""


class NotFound(StorageError):
    """The bucket or the object does not exist."""


def validate_bucket(bucket: str) -> str:
    """`bucket` if it is a valid S3 bucket name, else `InvalidName` saying which rule it breaks."""
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise InvalidName(
            f"{bucket!r} is not a valid bucket name: use 3 to 63 lowercase letters, digits, dots and "
            "hyphens, starting and ending with a letter or digit"
        )
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        raise InvalidName(f"{bucket!r} is not a valid bucket name: dots may not be next to dots or hyphens")
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        raise InvalidName(f"{bucket!r} is not a valid bucket name: it may not look like an IP address")
    if bucket.startswith(_BUCKET_RESERVED_PREFIXES) or bucket.endswith(_BUCKET_RESERVED_SUFFIXES):
        raise InvalidName(f"{bucket!r} is not a valid bucket name: that prefix or suffix is reserved")
    return bucket


def _check_text(what: str, text: str) -> None:
    if not isinstance(text, str):
        raise InvalidName(f"the {what} must be text")
    if "\x00" in text:
        raise InvalidName(f"the {what} {text!r} contains a NUL character")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidName(f"the {what} {text!r} contains a control character")
    if "\\" in text:
        raise InvalidName(f"the {what} {text!r} contains a backslash; separate folders with '/'")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"the {what} {text!r} is not valid text (a lone surrogate)") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidName(f"the {what} is longer than {MAX_KEY_BYTES} bytes")
    if text.startswith("/"):
        raise InvalidName(f"the {what} {text!r} is an absolute path; give it relative to the bucket")


def validate_key(key: str) -> str:
    """`key` if it names an object safely: relative, '/'-separated, no empty, '.' or '..' segment, no NUL,
    control character or backslash, at most 1024 bytes."""
    _check_text("key", key)
    if not key:
        raise InvalidName("the key is empty")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidName(f"the key {key!r} has an empty, '.' or '..' folder; keys may not leave their bucket")
    return key


def validate_prefix(prefix: str) -> str:
    """A key prefix: the key rules, except that it may be empty and may end with '/'."""
    _check_text("prefix", prefix)
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def join_key(*parts: str) -> str:
    """Keys joined with single slashes: `join_key("era5/", "a.nc") == "era5/a.nc"`."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


class ObjectStore(ABC):
    """Buckets of objects addressed by key. Every method validates its bucket and key first."""

    @abstractmethod
    def list_buckets(self) -> list[str]:
        """Names of the buckets, sorted."""

    @abstractmethod
    def bucket_exists(self, bucket: str) -> bool: ...

    @abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Create the bucket; nothing happens if it exists."""

    @abstractmethod
    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in the bucket that starts with `prefix` (a string prefix, as S3's), sorted."""

    def list_folders(self, bucket: str, prefix: str = "") -> list[str]:
        """The folders directly under `prefix` (a folder: empty or ending with '/'), each ending with '/',
        sorted: what a location picker offers. A folder exists while an object is under it."""
        if prefix and not prefix.endswith("/"):
            raise InvalidName(f"the folder {prefix!r} must end with '/'")
        folders = set()
        for key in self.list_keys(bucket, prefix):
            rest = key[len(prefix) :]
            if "/" in rest:  # an object directly under the prefix is not a folder
                folders.add(prefix + rest.split("/", 1)[0] + "/")
        return sorted(folders)

    @abstractmethod
    def read_bytes(self, bucket: str, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing what was there. Readers see the old object or the new one,
        never a part."""

    @abstractmethod
    def write_file(self, bucket: str, key: str, source: Path) -> None:
        """Store the content of a local file (a NetCDF an output writer made), atomically as write_bytes."""

    @abstractmethod
    def exists(self, bucket: str, key: str) -> bool: ...

    @abstractmethod
    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every key starting with `prefix` (which may not be empty); the number deleted."""

    @abstractmethod
    def local_path(self, bucket: str, key: str) -> contextlib.AbstractContextManager[Path]:
        """A context giving a local file with the object's content (NetCDF readers want a file): the file
        itself on the filesystem backend, a private temporary download otherwise, removed on exit."""

    def location(self, bucket: str, key: str = "") -> str:
        """How messages name an object: `bucket/key`."""
        return f"{bucket}/{key}" if key else f"{bucket}/"


class FileSystemStore(ObjectStore):
    """Buckets as folders under `root` (DATA_DIR/obs)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # --- paths ---
    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / validate_bucket(bucket)

    def _existing_bucket_dir(self, bucket: str) -> Path:
        folder = self._bucket_dir(bucket)
        if not folder.is_dir():
            raise NotFound(f"the bucket {bucket!r} does not exist")
        return folder

    def _path(self, bucket: str, key: str) -> Path:
        """The file for `key`, refused if a symbolic link inside the bucket leads out of it."""
        folder = self._existing_bucket_dir(bucket)
        path = folder / validate_key(key)
        resolved = path.resolve()
        if not resolved.is_relative_to(folder.resolve()):
            raise InvalidName(f"the key {key!r} leads out of the bucket {bucket!r}")
        return path

    def _ensure_root(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _tmp_file(self) -> tuple[int, Path]:
        # On the same filesystem as the buckets, so os.replace() is an atomic rename.
        tmp_dir = self.root / _TMP_DIR
        tmp_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = tmp_dir / uuid.uuid4().hex
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path

    def _mkdirs(self, folder: Path, stop: Path) -> None:
        missing = []
        while folder != stop and not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except NotADirectoryError:
                raise StorageError(f"cannot create the folder {path.name!r}: an object of that name exists") from None
        if folder.exists() and not folder.is_dir():
            raise StorageError(f"cannot create the folder {folder.name!r}: an object of that name exists")

    # --- buckets ---
    def list_buckets(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for entry in self.root.iterdir():
            if entry.is_dir():
                with contextlib.suppress(InvalidName):
                    names.append(validate_bucket(entry.name))
        return sorted(names)

    def bucket_exists(self, bucket: str) -> bool:
        return self._bucket_dir(bucket).is_dir()

    def create_bucket(self, bucket: str) -> None:
        folder = self._bucket_dir(bucket)
        self._ensure_root()
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)

    # --- objects ---
    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        folder = self._existing_bucket_dir(bucket)
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix names in full, then filter by the string prefix.
        start = folder / prefix.rpartition("/")[0] if "/" in prefix else folder
        keys = []
        for dirpath, _dirnames, filenames in os.walk(start):
            for name in filenames:
                key = (Path(dirpath) / name).relative_to(folder).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(InvalidName):  # a file no key can name is not an object
                        keys.append(validate_key(key))
        return sorted(keys)

    def read_bytes(self, bucket: str, key: str) -> bytes:
        path = self._path(bucket, key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"{self.location(bucket, key)} does not exist") from None

    def _install(self, bucket: str, key: str, tmp: Path) -> None:
        path = self._path(bucket, key)
        try:
            if path.is_dir():
                raise StorageError(f"cannot write {self.location(bucket, key)}: a folder of that name exists")
            self._mkdirs(path.parent, self._bucket_dir(bucket))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def write_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self._path(bucket, key)  # validates before anything is written
        fd, tmp = self._tmp_file()
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._install(bucket, key, tmp)

    def write_file(self, bucket: str, key: str, source: Path) -> None:
        self._path(bucket, key)
        fd, tmp = self._tmp_file()
        try:
            with os.fdopen(fd, "wb") as fh, open(source, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._install(bucket, key, tmp)

    def exists(self, bucket: str, key: str) -> bool:
        if not self.bucket_exists(bucket):
            return False
        return self._path(bucket, key).is_file()

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        if not validate_prefix(prefix):
            raise InvalidName("refusing to delete with an empty prefix (that would empty the bucket)")
        folder = self._existing_bucket_dir(bucket)
        keys = self.list_keys(bucket, prefix)
        for key in keys:
            (folder / key).unlink(missing_ok=True)
        # Remove the folders the deletion left empty, deepest first, never the bucket itself.
        parents = sorted({(folder / key).parent for key in keys}, key=lambda p: len(p.parts), reverse=True)
        for parent in parents:
            while parent != folder and parent.is_relative_to(folder):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
        return len(keys)

    @contextlib.contextmanager
    def _local(self, bucket: str, key: str) -> Iterator[Path]:
        path = self._path(bucket, key)
        if not path.is_file():
            raise NotFound(f"{self.location(bucket, key)} does not exist")
        yield path

    def local_path(self, bucket: str, key: str) -> contextlib.AbstractContextManager[Path]:
        return self._local(bucket, key)


class S3Store(ObjectStore):
    """Any S3-compatible service, through boto3."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        addressing_style: str = "path",
        client: Any = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=region or None,
            config=Config(
                s3={"addressing_style": addressing_style},
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    def _error(self, exc: Exception, bucket: str, key: str = "") -> StorageError:
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.location(bucket, key)
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return NotFound(f"the bucket {bucket!r} does not exist")
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFound(f"{where} does not exist")
            if code in ("AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId"):
                return StorageError(f"the object store refused access to {where} ({code}); check OBS_* settings")
            return StorageError(f"the object store failed on {where}: {code or exc}")
        if isinstance(exc, BotoCoreError):
            return StorageError(f"cannot reach the object store at {self.endpoint} for {where}: {exc}")
        return StorageError(f"the object store failed on {where}: {exc}")

    @contextlib.contextmanager
    def _calls(self, bucket: str, key: str = "") -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, bucket, key) from exc

    def list_buckets(self) -> list[str]:
        with self._calls("", ""):
            answer = self.client.list_buckets()
        return sorted(b["Name"] for b in answer.get("Buckets", []))

    def bucket_exists(self, bucket: str) -> bool:
        from botocore.exceptions import ClientError

        validate_bucket(bucket)
        try:
            self.client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise self._error(exc, bucket) from exc
        return True

    def create_bucket(self, bucket: str) -> None:
        if self.bucket_exists(bucket):
            return
        from botocore.exceptions import ClientError

        try:
            self.client.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error(exc, bucket) from exc

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        validate_bucket(bucket)
        validate_prefix(prefix)
        keys: list[str] = []
        with self._calls(bucket, prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def read_bytes(self, bucket: str, key: str) -> bytes:
        validate_bucket(bucket)
        validate_key(key)
        with self._calls(bucket, key):
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def write_bytes(self, bucket: str, key: str, data: bytes) -> None:
        validate_bucket(bucket)
        validate_key(key)
        # A PUT is atomic in S3: the object appears whole or not at all.
        with self._calls(bucket, key):
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def write_file(self, bucket: str, key: str, source: Path) -> None:
        validate_bucket(bucket)
        validate_key(key)
        # upload_file switches to a multipart upload for large files; S3 shows the object only once the
        # upload is completed, so readers never see a part.
        with self._calls(bucket, key):
            self.client.upload_file(str(source), bucket, key)

    def exists(self, bucket: str, key: str) -> bool:
        from botocore.exceptions import ClientError

        validate_bucket(bucket)
        validate_key(key)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                return False
            raise self._error(exc, bucket, key) from exc
        return True

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        if not validate_prefix(prefix):
            raise InvalidName("refusing to delete with an empty prefix (that would empty the bucket)")
        keys = self.list_keys(bucket, prefix)
        with self._calls(bucket, prefix):
            for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                answer = self.client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise StorageError(
                        f"could not delete {self.location(bucket, first.get('Key', ''))}: {first.get('Code')}"
                    )
        return len(keys)

    @contextlib.contextmanager
    def _local(self, bucket: str, key: str) -> Iterator[Path]:
        validate_bucket(bucket)
        validate_key(key)
        folder = Path(tempfile.mkdtemp(prefix="obs-"))  # 0700
        try:
            path = folder / key.rpartition("/")[2]
            with self._calls(bucket, key):
                self.client.download_file(bucket, key, str(path))
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def local_path(self, bucket: str, key: str) -> contextlib.AbstractContextManager[Path]:
        return self._local(bucket, key)


def default_store() -> ObjectStore:
    """The deployment's store: S3 when `OBS_ENDPOINT` is set, else folders under DATA_DIR/obs."""
    from django.conf import settings

    if settings.OBS_ENDPOINT:
        return S3Store(
            endpoint=settings.OBS_ENDPOINT,
            access_key_id=settings.OBS_ACCESS_KEY_ID,
            secret_access_key=settings.OBS_SECRET_ACCESS_KEY,
            region=settings.OBS_REGION,
            addressing_style=settings.OBS_ADDRESSING_STYLE,
        )
    return FileSystemStore(settings.OBS_ROOT)

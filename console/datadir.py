"""DATA_DIR, the one folder a run writes to (default `./var`, which git ignores).

Importing the settings creates nothing: they only name paths under DATA_DIR. `prepare_data_dir()`
creates the folders and the generated secret key, and every process entry point calls it before
Django's settings are first read:

- `manage.py`, `console/asgi.py` and `console/wsgi.py` at their top;
- the Celery app (`console/celery.py`) when it loads its configuration, which is before a worker reads
  any setting;
- `python -m local_llm` and `local_llm/asgi.py`;
- `make test`, through `python -m console.datadir`, before pytest starts. pytest-django imports the
  settings while pytest loads its plugins, before any conftest is imported, so no test hook could
  create the secret key in time. Rather than have the settings create it after all, a DATA_DIR that
  was never prepared fails at that import with an error that names the file and this command.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from console.lib.env import env, read_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = "./var"
SECRET_KEY_MIN_LENGTH = 32


def resolve(path: str) -> Path:
    """A configured path; a relative one is taken from the project folder, so `DATA_DIR=./var` in
    `.env` names the same folder whatever the working directory of the process."""
    return (BASE_DIR / Path(path).expanduser()).resolve()


def data_dir() -> Path:
    """DATA_DIR as the settings define it (they call this)."""
    read_dotenv(BASE_DIR)
    return resolve(env.str("DATA_DIR", default=DEFAULT_DATA_DIR))


@dataclass(frozen=True)
class Layout:
    """The paths under DATA_DIR that the settings name and `prepare_data_dir()` creates."""

    root: Path

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def broker_queue(self) -> Path:
        # The embedded Celery broker (kombu's filesystem transport): producer and consumer share it.
        return self.broker / "queue"

    @property
    def broker_processed(self) -> Path:
        return self.broker / "processed"

    @property
    def broker_control(self) -> Path:
        # kombu's exchange tables; kombu's own default is `control/` in the working directory.
        return self.broker / "control"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def obs(self) -> Path:
        # The filesystem object store of the forecast jobs: one folder per bucket (forecasts/storage.py).
        return self.root / "obs"

    @property
    def static(self) -> Path:
        # STATIC_ROOT: the static file server warns at every start when it is missing.
        return self.root / "static"

    @property
    def secret_key(self) -> Path:
        return self.root / "secret_key"

    @property
    def database(self) -> Path:
        # The embedded runtime's SQLite file; its -wal and -shm companions take its permissions.
        return self.root / "console.sqlite3"

    def folders(self) -> tuple[Path, ...]:
        return (
            self.root,
            self.broker,
            self.broker_queue,
            self.broker_processed,
            self.broker_control,
            self.results,
            self.obs,
            self.static,
        )


def read_secret_key(layout: Layout) -> str:
    """The key `prepare_data_dir()` generated, for when SECRET_KEY is not set."""
    path = layout.secret_key
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        raise ImproperlyConfigured(
            f"SECRET_KEY is not set and {path} does not exist. Start the console through manage.py, "
            "console.asgi, console.wsgi, the Celery app or make, which create it, or run "
            "`python -m console.datadir` once."
        ) from None
    if len(key) < SECRET_KEY_MIN_LENGTH:
        raise ImproperlyConfigured(f"{path} holds a key shorter than {SECRET_KEY_MIN_LENGTH} characters")
    return key


def _create_secret_key(path: Path) -> None:
    """Generate the key once, owner-only. Written aside, then linked into place: of two processes
    starting together one link wins and the other keeps that file, and no reader ever sees it empty."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


# What this process creates is its owner's alone: DATA_DIR holds the database (password hashes,
# encrypted provider secrets, sessions), the queue's messages and job outputs, and the files the
# libraries write there (SQLite, kombu, Celery results) take the process umask.
UMASK = 0o077


def _owner_only(path: Path, mode: int) -> None:
    """Tighten a folder or file made by an older version or another umask; leave alone what belongs to
    someone else (a DATA_DIR an administrator prepared and shares on purpose)."""
    if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)


def _create_database_file(path: Path) -> None:
    # SQLite creates its file with the process umask, and its -wal/-shm files with the file's mode:
    # making the file here, owner-only, covers all three whatever umask a later process runs under.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            _owner_only(companion, 0o600)


def prepare_data_dir() -> Path:
    """Create DATA_DIR's folders (owner-only, as is everything the process creates afterwards: it sets
    the umask) and, unless SECRET_KEY is set, the generated key that sessions and encrypted secrets rely
    on across restarts. Idempotent; safe for processes starting together."""
    layout = Layout(data_dir())
    os.umask(UMASK)
    try:
        for folder in layout.folders():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _owner_only(folder, 0o700)
        if not env.str("DATABASE_URL", default=""):
            _create_database_file(layout.database)
        if not env.str("SECRET_KEY", default=""):
            _create_secret_key(layout.secret_key)
    except OSError as exc:
        raise ImproperlyConfigured(f"DATA_DIR {layout.root} is not writable: {exc}") from exc
    return layout.root


if __name__ == "__main__":
    print(prepare_data_dir())

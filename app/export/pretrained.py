"""``voxgate export --pretrained NAME``: download NVIDIA's published NeMo speaker checkpoint, then export it.

Download locations are those of NeMo's ``EncDecSpeakerLabelModel.list_available_models()`` (NGC), plus the
Hugging Face home of TitaNet-L, tried in order. ``VOXGATE_PRETRAINED_BASE_URL`` (or ``base_url=``)
replaces them with ``<base>/<name>.nemo``: a mirror, or a local server in tests.

Downloads go to ``<cache>/<name>.nemo.part`` and are resumed from there (HTTP Range) after an
interruption; the finished file is checked and renamed into place atomically, so a cached ``.nemo`` is
always complete. Where the sha256 is published it is checked; where it is not, the hash of the first
download is recorded next to the file (``<name>.nemo.sha256``) and later uses are checked against it.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from app import __version__
from app.core.paths import sha256_file
from app.core.settings import env_var
from app.engine.manifest import ModelManifest
from app.export.nemo_export import export_nemo_checkpoint

log = logging.getLogger(__name__)

BASE_URL_ENV = env_var("pretrained_base_url")
CACHE_DIR_ENV = env_var("pretrained_cache_dir")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "voxgate" / "pretrained"
CHUNK_BYTES = 1 << 20
NGC = "https://api.ngc.nvidia.com/v2/models/nvidia/nemo"


class DownloadError(RuntimeError):
    """The checkpoint could not be downloaded, or the download failed its integrity check."""


@dataclass(frozen=True)
class PretrainedCheckpoint:
    name: str
    urls: tuple[str, ...]
    sha256: str | None  # None: not published; recorded on first download
    license: str | None
    model_card: str

    @property
    def filename(self) -> str:
        return f"{self.name}.nemo"


PRETRAINED: dict[str, PretrainedCheckpoint] = {
    checkpoint.name: checkpoint
    for checkpoint in (
        PretrainedCheckpoint(
            "titanet_large",
            (
                "https://huggingface.co/nvidia/speakerverification_en_titanet_large/resolve/main/"
                "speakerverification_en_titanet_large.nemo",
                f"{NGC}/titanet_large/versions/v1/files/titanet-l.nemo",
            ),
            None,
            "CC-BY-4.0",
            "https://huggingface.co/nvidia/speakerverification_en_titanet_large",
        ),
        PretrainedCheckpoint(
            "titanet_small",
            (f"{NGC}/titanet_small/versions/1.19.0/files/titanet-s.nemo",),
            None,
            None,
            "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/nemo/models/titanet_small",
        ),
        PretrainedCheckpoint(
            "ecapa_tdnn",
            (f"{NGC}/ecapa_tdnn/versions/1.16.0/files/ecapa_tdnn.nemo",),
            None,
            None,
            "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/nemo/models/ecapa_tdnn",
        ),
        PretrainedCheckpoint(
            "speakerverification_speakernet",
            (
                f"{NGC}/speakerverification_speakernet/versions/1.16.0/files/speakerverification_speakernet.nemo",
            ),
            None,
            None,
            "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/nemo/models/speakerverification_speakernet",
        ),
    )
}


def checkpoint_urls(checkpoint: PretrainedCheckpoint, base_url: str | None = None) -> tuple[str, ...]:
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    if base:
        return (f"{base.rstrip('/')}/{checkpoint.filename}",)
    return checkpoint.urls


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise downloads of one file between processes (two writers would corrupt the .part)."""
    lock_path = path.with_name(path.name + ".lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_file(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    timeout_s: float = 60.0,
    progress: bool = True,
) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check it, move it into place; return its sha256.

    An interrupted transfer leaves ``dest.part`` for the next call to resume. A sha256 mismatch deletes
    the partial file (its bytes cannot be trusted) and raises ``DownloadError``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"voxgate/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout_s)
    except HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to fetch: the .part is already whole
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (URLError, OSError) as exc:
        raise DownloadError(f"{url}: {exc}") from exc
    if response is not None:
        with response:
            if offset and response.status != 206:
                offset = 0  # the server ignored the Range header: start again
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            try:
                with (
                    part.open("ab" if offset else "wb") as out,
                    tqdm(
                        total=total,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress,
                    ) as bar,
                ):
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        bar.update(len(chunk))
            except (OSError, HTTPException) as exc:  # connection reset, IncompleteRead, timeout
                raise DownloadError(
                    f"{url}: transfer interrupted after {part.stat().st_size} bytes: {exc}"
                ) from exc
            if total is not None and part.stat().st_size != total:
                raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes (resumable)")
    digest = sha256_file(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the published {expected_sha256}")
    os.replace(part, dest)
    _sidecar(dest).write_text(digest + "\n")
    return digest


def fetch_checkpoint(
    name: str,
    *,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> tuple[Path, str, str]:
    """Return (local path, sha256, source URL) of pretrained checkpoint ``name``, downloading it if needed."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose from {sorted(PRETRAINED)}")
    checkpoint = PRETRAINED[name]
    expected = expected_sha256 or checkpoint.sha256
    cache = cache_dir or Path(os.environ.get(CACHE_DIR_ENV, DEFAULT_CACHE_DIR))
    dest = cache / checkpoint.filename
    urls = checkpoint_urls(checkpoint, base_url)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        if dest.is_file():
            digest = sha256_file(dest)
            recorded = _sidecar(dest).read_text().strip() if _sidecar(dest).is_file() else None
            wanted = expected or recorded
            if wanted is None or digest == wanted.lower():
                return dest, digest, urls[0]
            log.warning("cached %s has sha256 %s, expected %s: downloading again", dest, digest, wanted)
            dest.unlink()
        errors = []
        for url in urls:
            try:
                digest = download_file(url, dest, expected_sha256=expected, progress=progress)
            except DownloadError as exc:
                log.warning("download failed: %s", exc)
                errors.append(str(exc))
                continue
            return dest, digest, url
    raise DownloadError(f"could not download {name}: " + "; ".join(errors))


def export_pretrained(
    name: str,
    out: Path,
    *,
    precision: str,
    cache_dir: Path | None,
    base_url: str | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> ModelManifest:
    """Download (or reuse from the cache) NVIDIA's checkpoint ``name`` and export it to ``out``."""
    path, _, url = fetch_checkpoint(
        name, cache_dir=cache_dir, base_url=base_url, expected_sha256=expected_sha256, progress=progress
    )
    checkpoint = PRETRAINED[name]
    return export_nemo_checkpoint(
        path,
        out,
        precision=precision,
        name=name,
        source=url,
        license=checkpoint.license,
        attribution=f"NVIDIA NeMo pretrained model {name} ({checkpoint.model_card})",
    )

"""Release files on disk: downloads renamed into place only when complete, safe extraction of
one member of a .tar.gz, checksums, and the cache's lock (weights/pretrained.py uses them).

The errors are user errors (the command lines print them as one line); their messages say how
to get the files by hand.
"""

import contextlib
import gzip
import hashlib
import http.client
import lzma
import os
import pathlib
import posixpath
import re
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import uuid
import zlib

import tqdm

from logocap_jax import errors

try:
    import fcntl
except ImportError:  # Windows: concurrent first uses rely on the atomic rename alone.
    fcntl = None

TIMEOUT_S = 60
CHUNK = 1 << 20


class PretrainedError(errors.UserError, RuntimeError):
    """Base of the errors of getting official weights; a user error (the command lines print it
    as one line): the message says how to get the weights by hand."""


class DownloadError(PretrainedError):
    """The archive could not be downloaded (offline, HTTP error, interrupted transfer)."""


class ArchiveError(PretrainedError):
    """The archive is damaged, unsafe, lacks the member or does not match its sha256."""


@contextlib.contextmanager
def locked(root: str, progress: bool):
    """Holds the cache's lock file (other processes' first uses wait)."""
    with open(os.path.join(root, ".lock"), "a") as lock:
        if fcntl is None:
            yield
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"Waiting for another process using {root} ...", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def download(url: str, path: str, hint: str, progress: bool) -> None:
    """Downloads `url` to `path` through a temporary file renamed only when complete."""
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        raise DownloadError(
            f"Could not download {url}: HTTP {error.code} {error.reason}. {hint}"
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"Could not download {url}: {reason}. {hint}") from error
    part = temporary_path(path, ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with response, os.fdopen(fd, "wb") as file:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm.tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=os.path.basename(path),
                disable=not progress,
            ) as bar:
                while chunk := response.read(CHUNK):
                    file.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(
                f"Download of {url} was interrupted after {received} of {total} bytes. {hint}"
            )
        os.replace(part, path)
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(f"Download of {url} failed: {error!r}. {hint}") from error
    finally:
        if os.path.exists(part):
            os.remove(part)


def temporary_path(path: str, suffix: str) -> str:
    """A unique hidden sibling of `path` that does not look finished (permissions per umask)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{uuid.uuid4().hex}{suffix}")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def refuse(archive: str, url: str, problem: str) -> ArchiveError:
    """Deletes a downloaded archive that failed verification; the error to raise."""
    os.remove(archive)
    return ArchiveError(f"{problem} (archive {archive}, from {url}). The archive was deleted.")


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why an archive member is refused, or None."""
    parts = pathlib.PurePosixPath(info.name).parts
    if info.name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", info.name):
        return "has an absolute path"
    if ".." in parts:
        return "has '..' in its path"
    if info.issym() or info.islnk():
        return "is a link"
    if not (info.isfile() or info.isdir()):
        return "is not a regular file or directory"
    return None


def extract(archive: str, url: str, member: str, directory: str) -> str:
    """Extracts `member` from a .tar.gz into `directory`, checking every member on the way."""
    target = os.path.join(directory, posixpath.basename(member))
    found, problem = False, None
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:
                why = member_problem(info)
                if why:
                    problem = f"Refused: archive member {info.name!r} {why}"
                    break
                if info.isfile() and posixpath.normpath(info.name) == member:
                    with tar.extractfile(info) as source, open(target, "wb") as file:
                        shutil.copyfileobj(source, file, CHUNK)
                    found = True
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as error:
        problem = f"Not a readable .tar.gz archive ({error})"
    if problem is None and not found:
        problem = f"The archive holds no file {member}"
    if problem:
        raise refuse(archive, url, problem)
    return target

"""The official LOGO-CAP weights in one call: downloaded, converted once and cached.

  config, variables = pretrained.load("w32")       # COCO-trained LOGO-CAP, HRNet-W32
  predict.predict(variables, "photo.jpg", config=config)
  config.train.imagenet_checkpoint = pretrained.imagenet_checkpoint("w32")  # for training
  python -m logocap_jax.commands.pretrained w32             # prints the cached checkpoint's path

The weights are the release assets of the official LOGO-CAP implementation (CVPR 2022):
`logocap.tar.gz` holds the COCO-trained models, `imagenet.tar.gz` the ImageNet-pretrained HRNet
backbones used to initialise training. On first use the archive is downloaded (with a progress
bar) into a temporary file that is renamed only once complete, the one member needed is
extracted (archives with absolute paths, `..` or links in member names are refused) and
converted, and the result is renamed into the cache as a whole, so an interrupted run never
leaves anything that looks finished. Later calls read the cache without network access.
Concurrent first uses wait on a lock file, so each archive is downloaded and converted once.

Cache layout (`$LOGOCAP_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/logocap_jax`, else
`~/.cache/logocap_jax`; or the `cache_dir` argument):

  downloads/logocap.tar.gz      release archives, kept for their other members (may be deleted);
                                one found here (e.g. copied by hand) is used without network,
                                and downloaded again if it fails verification
  w32/checkpoint/               orbax checkpoint of the converted variables
  w32/source.json               archive URL, member, archive size and sha256, config
  imagenet-w32/state_dict.npz   ImageNet backbone state dict, for `train.imagenet_checkpoint`
  imagenet-w32/source.json
  .lock                         held while something is downloaded or converted

Mirrors and air-gapped copies: pass `url=` (the archive's URL, `file://` URL or local path) or
set `$LOGOCAP_JAX_RELEASE_URL` to a folder (URL or path) that holds the official archives under
their release names. A `sha256=` given is checked against the archive, also on later cache hits.

`.pth` files are read with PyTorch if it is installed, else with `weights.torch_checkpoint`
(see `convert.load_state_dict`), so neither download nor conversion needs PyTorch.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import posixpath
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from logocap_jax import config_utils, errors
from logocap_jax.weights import archives, checkpoints, convert
from logocap_jax.weights.archives import ArchiveError, PretrainedError

RELEASE_URL = "https://github.com/cherubicXN/logocap/releases/download/checkpoints"
CACHE_DIR_ENV = "LOGOCAP_JAX_CACHE_DIR"
RELEASE_URL_ENV = "LOGOCAP_JAX_RELEASE_URL"


@dataclasses.dataclass(frozen=True)
class Release:
    """A checkpoint file inside a release archive.

    Attributes:
      name: name of its cache entry (letters, digits, '.', '_', '-').
      url: URL of the archive (a `.tar.gz`).
      member: path of the checkpoint (a `torch.save` file or `.npz`) inside the archive.
      config: for LOGO-CAP models, the config whose model the weights fit (a bundled config's
        name or a config file path); empty for ImageNet backbones, which are cached as state dicts.
      sha256: the archive's sha256 if known; checked like a `sha256` argument.
    """

    name: str
    url: str
    member: str
    config: str = ""
    sha256: str | None = None


MODELS = {
    "w32": Release(
        "w32", f"{RELEASE_URL}/logocap.tar.gz", "logocap/logocap-hrnet-w32-coco.pth.tar", "w32"
    ),
    "w48": Release(
        "w48", f"{RELEASE_URL}/logocap.tar.gz", "logocap/logocap-hrnet-w48-coco.pth.tar", "w48"
    ),
}
IMAGENET = {
    "w32": Release(
        "imagenet-w32", f"{RELEASE_URL}/imagenet.tar.gz", "imagenet/hrnet_w32-36af842e.pth"
    ),
    "w48": Release(
        "imagenet-w48",
        f"{RELEASE_URL}/imagenet.tar.gz",
        "imagenet/hrnetv2_w48_imagenet_pretrained.pth",
    ),
}


def cache_root(cache_dir: str | None = None) -> str:
    """The cache directory: `cache_dir`, else $LOGOCAP_JAX_CACHE_DIR, else the user cache."""
    if not cache_dir:
        cache_dir = os.environ.get(CACHE_DIR_ENV)
    if not cache_dir:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        cache_dir = os.path.join(base, "logocap_jax")
    return os.path.abspath(os.path.expanduser(cache_dir))


def _as_url(location: str) -> str:
    """A URL for `location`, which may also be a local path."""
    if urllib.parse.urlparse(location).scheme in ("http", "https", "file", "ftp"):
        return location
    return pathlib.Path(os.path.expanduser(location)).resolve().as_uri()


def archive_url(release: Release, url: str | None = None) -> str:
    """The archive URL in effect: `url`, else the release's.

    $LOGOCAP_JAX_RELEASE_URL, when set, replaces the official release folder (`RELEASE_URL`) in
    the URLs of the official archives; other releases keep theirs.
    """
    if url:
        return _as_url(url)
    folder = os.environ.get(RELEASE_URL_ENV)
    if folder and release.url.startswith(RELEASE_URL + "/"):
        return _as_url(folder).rstrip("/") + "/" + _archive_name(release.url)
    return release.url


def _archive_name(url: str) -> str:
    name = posixpath.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"The archive URL {url!r} names no file")
    return name


def _release(name, registry: dict, what: str) -> Release:
    release = registry.get(name) if isinstance(name, str) else name
    if not isinstance(release, Release):
        raise ValueError(f"Unknown {what} {name!r}; known: {', '.join(registry)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", release.name):
        raise ValueError(f"Release name {release.name!r} is not a plain file name")
    return release


def _resolve_config(config):
    """A ConfigDict from a ConfigDict, a bundled config's name or a config file path."""
    return config_utils.load_config(config) if isinstance(config, str) else config


def _config_label(config) -> str:
    if not isinstance(config, str):
        return "the given ConfigDict"
    return f"config {config}" if config_utils.is_config_name(config) else config


def _manual_hint(release: Release, url: str, root: str, config) -> str:
    archive = _archive_name(url)
    member = release.member
    steps = [
        f"To install it by hand, download {url} on a machine with network access, then either "
        f"copy it to {os.path.join(root, 'downloads', archive)} (it is used from there), or pass "
        f"url= (or set {RELEASE_URL_ENV} to its folder) with a mirror, a file:// URL or a path",
    ]
    if config:
        config_arg = config if isinstance(config, str) else "<config file>"
        steps.append(
            f"or extract and convert it yourself: tar -xzf {archive} {member} && python -m "
            f"logocap_jax.commands.convert --config {config_arg} --input {member} "
            "--output <checkpoint directory>, then use that directory as the checkpoint"
        )
    else:
        steps.append(
            f"or extract it (tar -xzf {archive} {member}) and pass {member} as "
            "train.imagenet_checkpoint"
        )
    return "; ".join(steps) + "."


def _read_source(entry: str) -> dict:
    with open(os.path.join(entry, "source.json")) as file:
        return json.load(file)


def _cached(
    release: Release,
    product: str,
    build,
    *,
    cache_dir: str | None,
    url: str | None,
    sha256: str | None,
    config,
    progress: bool,
) -> str:
    """The cache entry of `release` holding `product`, made by `build(member, entry)` if absent."""
    root = cache_root(cache_dir)
    entry = os.path.join(root, release.name)
    expected_sha = (sha256 or release.sha256 or "").lower() or None
    if not os.path.exists(os.path.join(entry, product)):
        os.makedirs(os.path.join(root, "downloads"), exist_ok=True)
        with archives.locked(root, progress):
            if not os.path.exists(os.path.join(entry, product)):
                if os.path.exists(entry):
                    raise PretrainedError(
                        f"{entry} is not a complete cache entry (it holds no {product}); "
                        "delete it to convert again"
                    )
                _create(release, entry, build, url, expected_sha, config, progress)
    recorded = _read_source(entry)["archive"]["sha256"] if expected_sha else None
    if recorded != expected_sha:
        raise ArchiveError(
            f"The cache entry {entry} was converted from an archive with sha256 {recorded}, "
            f"not {expected_sha}; delete it (and its archive in downloads/) to download again"
        )
    return entry


def _create(release, entry, build, url, expected_sha, config, progress) -> None:
    """Makes the cache entry from the kept archive if it passes, else from a fresh download."""
    root = os.path.dirname(entry)
    url = archive_url(release, url)
    archive = os.path.join(root, "downloads", _archive_name(url))
    if os.path.exists(archive):
        try:
            _convert_archive(release, entry, build, archive, url, expected_sha, config, progress)
            return
        except ArchiveError as error:
            if progress:
                print(f"{error} Downloading it again.", file=sys.stderr)
    archives.download(url, archive, _manual_hint(release, url, root, config), progress)
    _convert_archive(release, entry, build, archive, url, expected_sha, config, progress)


def _convert_archive(release, entry, build, archive, url, expected_sha, config, progress):
    """Verifies the archive, extracts and converts its member, renames the result into place."""
    sha = archives.file_sha256(archive)
    if expected_sha and sha != expected_sha:
        raise archives.refuse(
            archive, url, f"sha256 mismatch: the archive has {sha}, expected {expected_sha}"
        )
    size = os.path.getsize(archive)
    work = archives.temporary_path(entry, ".partial")
    os.mkdir(work)
    try:
        member = archives.extract(archive, url, release.member, work)
        if progress:
            print(f"Converting {release.member} ...", file=sys.stderr)
        build(member, work)
        os.remove(member)
        source = {
            "name": release.name,
            "url": url,
            "member": release.member,
            "archive": {"file": os.path.basename(archive), "size": size, "sha256": sha},
            "config": config if isinstance(config, str) else None,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        with open(os.path.join(work, "source.json"), "w") as file:
            json.dump(source, file, indent=2)
        try:
            os.rename(work, entry)
        except OSError:
            if not os.path.isdir(entry):  # else another process (without the lock) was first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def checkpoint_path(
    name,
    *,
    cache_dir: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    config=None,
    progress: bool = True,
) -> str:
    """The orbax checkpoint of official LOGO-CAP weights, downloaded and converted on first use.

    Args:
      name: "w32" or "w48" (see `MODELS`), or a `Release` (e.g. a mirror's own archive layout).
      cache_dir: the cache directory; default $LOGOCAP_JAX_CACHE_DIR, else ~/.cache/logocap_jax.
      url: the archive's URL (or local path), e.g. a mirror; default $LOGOCAP_JAX_RELEASE_URL's
        archive, else the official release.
      sha256: the archive's expected sha256, checked when given.
      config: the config whose model converts the weights (a ConfigDict, name or path); default
        the release's. Only used on first use.
      progress: show a download progress bar and status lines on stderr.

    Returns:
      A directory for `checkpoints.restore_variables` (or `--checkpoint` of the CLIs).

    Raises:
      DownloadError: offline, on an HTTP error or an interrupted download; the message names the
        URL and how to download and convert by hand.
      ArchiveError: for a damaged or unsafe archive, a missing member or a sha256 mismatch.
    """
    release = _release(name, MODELS, "model")
    config = release.config if config is None else config
    if not config:
        raise ValueError(f"Release {release.name!r} names no config; pass config=")

    def build(member, work):
        resolved = _resolve_config(config)
        template = convert.model_template(config_utils.build_model(resolved))
        try:
            state_dict = convert.load_state_dict(member)
        except errors.InputFormatError as error:
            raise ArchiveError(f"{release.member} is not a readable checkpoint: {error}") from error
        try:
            variables = convert.variables_from_state_dict(state_dict, template)
        except (KeyError, ValueError) as error:
            raise PretrainedError(
                f"{release.member} does not fit the model of {_config_label(config)}: "
                f"{error.args[0] if error.args else error}"
            ) from error
        checkpoints.save_variables(os.path.join(work, "checkpoint"), variables)

    entry = _cached(
        release,
        "checkpoint",
        build,
        cache_dir=cache_dir,
        url=url,
        sha256=sha256,
        config=config,
        progress=progress,
    )
    return os.path.join(entry, "checkpoint")


def load(name, *, config=None, **download):
    """Official LOGO-CAP weights and their config, downloaded and converted on first use.

    Args:
      name: "w32" or "w48" (see `MODELS`), or a `Release`.
      config: the config to return and build the model with (a ConfigDict, a bundled
        config's name or a file path), e.g. a variant with other test settings; its model must
        fit the weights. Default the release's config.
      **download: `checkpoint_path`'s cache_dir, url, sha256 and progress.

    Returns:
      (config, variables), ready for `predict.predict(variables, image, config=config)`,
      `predict.Predictor.from_config(config, variables)` and evaluation.

    Raises:
      DownloadError: offline, on an HTTP error or an interrupted download.
      ArchiveError: for a damaged or unsafe archive, a missing member or a sha256 mismatch.
      PretrainedError: if the weights do not fit the config's model.
    """
    release = _release(name, MODELS, "model")
    config = release.config if config is None else config
    path = checkpoint_path(release, config=config, **download)
    resolved = _resolve_config(config)
    template = convert.model_template(config_utils.build_model(resolved))
    try:
        variables = checkpoints.restore_variables(path, template)
    except ValueError as error:
        raise PretrainedError(
            f"{error}. The cache entry {os.path.dirname(path)} holds the weights of "
            f"{_read_source(os.path.dirname(path))['url']}; delete it to convert again"
        ) from error
    return resolved, variables


def imagenet_checkpoint(
    name,
    *,
    cache_dir: str | None = None,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> str:
    """ImageNet-pretrained HRNet backbone weights for training, downloaded on first use.

    Args:
      name: "w32" or "w48" (see `IMAGENET`), or a `Release`.
      cache_dir: the cache directory; default $LOGOCAP_JAX_CACHE_DIR, else ~/.cache/logocap_jax.
      url: the archive's URL (or local path); default $LOGOCAP_JAX_RELEASE_URL's archive, else
        the official release.
      sha256: the archive's expected sha256, checked when given.
      progress: show a download progress bar and status lines on stderr.

    Returns:
      Path of the backbone's state dict (`.npz`), for `config.train.imagenet_checkpoint`.

    Raises:
      DownloadError: offline, on an HTTP error or an interrupted download.
      ArchiveError: for a damaged or unsafe archive, a missing member or a sha256 mismatch.
    """
    release = _release(name, IMAGENET, "ImageNet backbone")

    def build(member, work):
        np.savez(os.path.join(work, "state_dict.npz"), **convert.load_state_dict(member))

    entry = _cached(
        release,
        "state_dict.npz",
        build,
        cache_dir=cache_dir,
        url=url,
        sha256=sha256,
        config="",
        progress=progress,
    )
    return os.path.join(entry, "state_dict.npz")

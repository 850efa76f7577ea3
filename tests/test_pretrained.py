"""Official weights in one call (logocap_jax.weights.pretrained), against a local HTTP server.

The server (127.0.0.1 only, tests/release_server.py) serves archives laid out like the official
release assets, holding the tiny model's official weights (tests/data/golden/tiny_state_dict.npz)
as a torch.save file, so download, extraction, conversion and caching run as they would for W32 in
seconds.
"""

import dataclasses
import hashlib
import json
import os
import re
import threading
from collections import OrderedDict

import jax
import numpy as np
import pth_writer
import pytest
import release_server
from ml_collections import config_flags
from release_server import TINY_MEMBER, Server, closed_port_url, make_archive

from logocap_jax import config_utils, errors
from logocap_jax.commands import cli, predict, weight_flags
from logocap_jax.commands import pretrained as pretrained_command
from logocap_jax.weights import archives, convert, pretrained


@pytest.fixture(scope="module")
def state_dict():
    return release_server.tiny_state_dict()


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory) -> bytes:
    """The tiny weights as an official-style training checkpoint (DataParallel keys)."""
    return release_server.tiny_pth(str(tmp_path_factory.mktemp("pth") / "tiny.pth.tar"))


@pytest.fixture(scope="module")
def logocap_archive(tiny_pth) -> bytes:
    """logocap.tar.gz as released, with the tiny weights as the tiny and the W32 member."""
    return release_server.logocap_archive(tiny_pth)


@pytest.fixture(scope="module")
def expected_variables(state_dict):
    config = config_utils.load_config(config_utils.default_config_path("tiny"))
    template = convert.model_template(config_utils.build_model(config))
    return convert.variables_from_state_dict(state_dict, template)


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No proxy, no user cache, nothing but 127.0.0.1 reachable."""
    for name in release_server.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    # A release folder on a closed local port: nothing falls back to the official URL.
    monkeypatch.setenv(pretrained.RELEASE_URL_ENV, closed_port_url("/nowhere"))
    monkeypatch.setenv(pretrained.CACHE_DIR_ENV, str(tmp_path / "env_cache"))


@pytest.fixture
def server(logocap_archive):
    server = Server()
    server.files["/logocap.tar.gz"] = logocap_archive
    yield server
    server.stop()


def tiny_release(url) -> pretrained.Release:
    return pretrained.Release("tiny", url, TINY_MEMBER, config="tiny")


def assert_same_tree(have, want):
    assert jax.tree_util.tree_structure(have) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(have), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), b)


def listing(directory) -> set:
    """Every path under `directory`, relative, directories with a trailing '/'."""
    paths = set()
    for root, dirs, files in os.walk(directory):
        rel = os.path.relpath(root, directory)
        paths.update(os.path.normpath(os.path.join(rel, d)) + "/" for d in dirs)
        paths.update(os.path.normpath(os.path.join(rel, f)) for f in files)
    return paths


def assert_no_entry(cache, name="tiny"):
    """Nothing that looks finished: no entry, no archive, no leftovers."""
    assert not os.path.exists(os.path.join(cache, name))
    assert {p for p in listing(cache) if not p.startswith("downloads/")} <= {".lock", "downloads/"}
    assert not os.listdir(os.path.join(cache, "downloads"))


def test_first_use_downloads_converts_and_caches(
    server, tmp_path, logocap_archive, expected_variables, capsys
):
    cache = str(tmp_path / "cache")
    release = tiny_release(f"{server.url}/logocap.tar.gz")
    config, variables = pretrained.load(release, cache_dir=cache)
    assert tuple(config.model.stage_widths) == (8, 16, 32, 64)
    assert_same_tree(variables, expected_variables)
    assert server.requests == ["/logocap.tar.gz"]
    err = capsys.readouterr().err
    assert "logocap.tar.gz" in err and f"Converting {TINY_MEMBER}" in err

    entry = os.path.join(cache, "tiny")
    assert {p for p in listing(cache) if not p.startswith("tiny/checkpoint/")} == {
        ".lock",
        "downloads/",
        "downloads/logocap.tar.gz",
        "tiny/",
        "tiny/source.json",
    }
    assert os.path.isdir(os.path.join(entry, "checkpoint"))
    with open(os.path.join(entry, "source.json")) as file:
        source = json.load(file)
    assert source["archive"] == {
        "file": "logocap.tar.gz",
        "size": len(logocap_archive),
        "sha256": hashlib.sha256(logocap_archive).hexdigest(),
    }
    assert (source["url"], source["member"], source["config"]) == (
        release.url,
        TINY_MEMBER,
        "tiny",
    )
    with open(os.path.join(cache, "downloads", "logocap.tar.gz"), "rb") as file:
        assert file.read() == logocap_archive
    assert pretrained.checkpoint_path(release, cache_dir=cache) == os.path.join(entry, "checkpoint")
    assert server.requests == ["/logocap.tar.gz"]


def test_second_call_needs_no_network(server, tmp_path, expected_variables):
    cache = str(tmp_path / "cache")
    release = tiny_release(f"{server.url}/logocap.tar.gz")
    pretrained.load(release, cache_dir=cache, progress=False)
    server.stop()
    os.remove(os.path.join(cache, "downloads", "logocap.tar.gz"))  # not needed any more
    config, variables = pretrained.load(release, cache_dir=cache, progress=False)
    assert_same_tree(variables, expected_variables)
    assert config.test.input_size == 128
    with pytest.raises(archives.DownloadError):
        pretrained.load(release, cache_dir=str(tmp_path / "other"), progress=False)


@pytest.mark.slow
def test_other_members_of_a_kept_archive_need_no_network(server, tmp_path, expected_variables):
    cache = str(tmp_path / "cache")
    pretrained.load(tiny_release(f"{server.url}/logocap.tar.gz"), cache_dir=cache, progress=False)
    server.stop()
    # The registry's W32 entry, from the same archive (tiny weights in its slot, tiny config).
    config, variables = pretrained.load("w32", cache_dir=cache, config="tiny", progress=False)
    assert_same_tree(variables, expected_variables)
    assert os.path.isdir(os.path.join(cache, "w32", "checkpoint"))


@pytest.mark.slow
def test_kept_archive_is_used_offline_and_replaced_when_bad(
    server, tmp_path, logocap_archive, expected_variables
):
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    kept = cache / "downloads" / "logocap.tar.gz"
    kept.write_bytes(b"a damaged copy")
    release = tiny_release(f"{server.url}/logocap.tar.gz")
    _, variables = pretrained.load(release, cache_dir=str(cache), progress=False)
    assert_same_tree(variables, expected_variables)
    assert server.requests == ["/logocap.tar.gz"] and kept.read_bytes() == logocap_archive
    server.stop()
    # Copied by hand into a fresh cache: no network needed.
    other = tmp_path / "other"
    (other / "downloads").mkdir(parents=True)
    (other / "downloads" / "logocap.tar.gz").write_bytes(logocap_archive)
    _, variables = pretrained.load(release, cache_dir=str(other), progress=False)
    assert_same_tree(variables, expected_variables)


@pytest.mark.parametrize("failure", ["offline", "http_404"])
def test_download_failure_names_the_url_and_the_manual_way(server, tmp_path, failure):
    cache = str(tmp_path / "cache")
    url = closed_port_url() if failure == "offline" else f"{server.url}/missing/logocap.tar.gz"
    with pytest.raises(archives.DownloadError) as error:
        pretrained.load(tiny_release(url), cache_dir=cache, progress=False)
    message = str(error.value)
    assert f"Could not download {url}" in message
    if failure == "http_404":
        assert "HTTP 404" in message
    assert os.path.join(cache, "downloads", "logocap.tar.gz") in message
    assert pretrained.RELEASE_URL_ENV in message
    assert f"tar -xzf logocap.tar.gz {TINY_MEMBER}" in message
    assert f"python -m logocap_jax.commands.convert --config tiny --input {TINY_MEMBER}" in message
    assert_no_entry(cache)


def test_interrupted_download_leaves_no_cache_entry(server, tmp_path, expected_variables):
    cache = str(tmp_path / "cache")
    release = tiny_release(f"{server.url}/logocap.tar.gz")
    server.truncate = True
    size = len(server.files["/logocap.tar.gz"])
    with pytest.raises(archives.DownloadError, match=f"after {size // 2} of {size} bytes"):
        pretrained.load(release, cache_dir=cache, progress=False)
    assert_no_entry(cache)
    server.truncate = False
    assert_same_tree(
        pretrained.load(release, cache_dir=cache, progress=False)[1], expected_variables
    )


@pytest.mark.parametrize("damage", ["not_gzip", "truncated_gzip", "not_tar", "no_member"])
def test_corrupt_archive_is_a_clear_error_and_is_deleted(server, tmp_path, logocap_archive, damage):
    import gzip

    served = {
        "not_gzip": b"<html>Not the archive</html>",
        "truncated_gzip": logocap_archive[: len(logocap_archive) // 2],
        "not_tar": gzip.compress(b"plain text, not a tar archive" * 100),
        "no_member": make_archive([("logocap/other.pth.tar", b"x")]),
    }[damage]
    server.files["/logocap.tar.gz"] = served
    cache = str(tmp_path / "cache")
    message = "holds no file" if damage == "no_member" else "Not a readable .tar.gz archive"
    with pytest.raises(archives.ArchiveError, match=message) as error:
        pretrained.load(
            tiny_release(f"{server.url}/logocap.tar.gz"), cache_dir=cache, progress=False
        )
    assert f"{server.url}/logocap.tar.gz" in str(error.value)
    assert_no_entry(cache)


def test_sha256_is_checked_when_given(server, tmp_path, logocap_archive):
    cache = str(tmp_path / "cache")
    release = tiny_release(f"{server.url}/logocap.tar.gz")
    digest = hashlib.sha256(logocap_archive).hexdigest()
    with pytest.raises(archives.ArchiveError, match=f"sha256 mismatch.*{digest}"):
        pretrained.load(release, cache_dir=cache, sha256="0" * 64, progress=False)
    assert_no_entry(cache)
    pretrained.load(release, cache_dir=cache, sha256=digest.upper(), progress=False)
    server.stop()
    pretrained.load(release, cache_dir=cache, sha256=digest, progress=False)
    with pytest.raises(
        archives.ArchiveError, match=f"converted from an archive with sha256 {digest}"
    ):
        pretrained.load(release, cache_dir=cache, sha256="1" * 64, progress=False)
    pinned = dataclasses.replace(release, sha256="2" * 64)
    with pytest.raises(archives.ArchiveError, match="2222"):
        pretrained.load(pinned, cache_dir=cache, progress=False)


@pytest.mark.parametrize(
    "unsafe, reason",
    [
        (("../evil.pth.tar", b"evil"), "has '..' in its path"),
        (("logocap/../../evil.pth.tar", b"evil"), "has '..' in its path"),
        (("/tmp/evil.pth.tar", b"evil"), "has an absolute path"),
        ((TINY_MEMBER, ("symlink", "/etc/passwd")), "is a link"),
        ((TINY_MEMBER, ("hardlink", "logocap/x")), "is a link"),
    ],
)
def test_unsafe_members_are_refused(server, tmp_path, tiny_pth, unsafe, reason):
    members = [("logocap/x", b""), unsafe]
    if unsafe[0] != TINY_MEMBER:
        members.append((TINY_MEMBER, tiny_pth))
    server.files["/logocap.tar.gz"] = make_archive(members)
    cache = str(tmp_path / "cache")
    with pytest.raises(archives.ArchiveError, match=re.escape(f"{unsafe[0]!r} {reason}")):
        pretrained.load(
            tiny_release(f"{server.url}/logocap.tar.gz"), cache_dir=cache, progress=False
        )
    assert_no_entry(cache)
    assert not any("evil" in path for path in listing(tmp_path))


@pytest.mark.slow
def test_url_override_by_argument_and_environment(
    server, tmp_path, monkeypatch, logocap_archive, expected_variables
):
    # The registry's W32 entry (tiny weights in its slot, loaded with the tiny config).
    server.files["/mirror/logocap.tar.gz"] = logocap_archive
    monkeypatch.setenv(pretrained.RELEASE_URL_ENV, f"{server.url}/mirror/")
    _, variables = pretrained.load("w32", config="tiny", progress=False)  # env cache dir too
    assert_same_tree(variables, expected_variables)
    assert server.requests == ["/mirror/logocap.tar.gz"]
    with open(os.path.join(os.environ[pretrained.CACHE_DIR_ENV], "w32", "source.json")) as file:
        assert json.load(file)["url"] == f"{server.url}/mirror/logocap.tar.gz"

    # The argument wins over the environment variable.
    monkeypatch.setenv(pretrained.RELEASE_URL_ENV, closed_port_url("/"))
    url = f"{server.url}/logocap.tar.gz"
    pretrained.checkpoint_path(
        "w32", cache_dir=str(tmp_path / "a"), url=url, config="tiny", progress=False
    )
    assert server.requests[-1] == "/logocap.tar.gz"

    # An air-gapped copy: a local path (as argument) or its folder (as environment variable).
    local = tmp_path / "copy" / "logocap.tar.gz"
    local.parent.mkdir()
    local.write_bytes(logocap_archive)
    server.stop()
    release = tiny_release(closed_port_url())
    pretrained.checkpoint_path(release, cache_dir=str(tmp_path / "b"), url=str(local))
    monkeypatch.setenv(pretrained.RELEASE_URL_ENV, str(local.parent))
    pretrained.checkpoint_path("w32", cache_dir=str(tmp_path / "c"), config="tiny")
    assert os.path.isdir(tmp_path / "b" / "tiny" / "checkpoint")
    assert os.path.isdir(tmp_path / "c" / "w32" / "checkpoint")


def test_environment_folder_replaces_only_the_official_release_folder(server, tmp_path):
    assert pretrained.archive_url(pretrained.MODELS["w48"]).endswith("/nowhere/logocap.tar.gz")
    release = tiny_release(f"{server.url}/own/logocap.tar.gz")
    assert pretrained.archive_url(release) == release.url
    assert pretrained.archive_url(release, url=str(tmp_path / "a.tar.gz")).startswith("file:///")


def test_imagenet_backbone_for_training(server, tmp_path, state_dict):
    backbone = {k.removeprefix("backbone."): v for k, v in state_dict.items() if "backbone." in k}
    backbone["classifier.weight"] = np.ones((10, 4), np.float32)
    pth = str(tmp_path / "hrnet.pth")
    pth_writer.save(OrderedDict(backbone), pth)
    with open(pth, "rb") as file:
        member = (pretrained.IMAGENET["w32"].member, file.read())
    server.files["/imagenet.tar.gz"] = make_archive([("imagenet", None), member])
    cache = str(tmp_path / "cache")
    path = pretrained.imagenet_checkpoint(
        "w32", cache_dir=cache, url=f"{server.url}/imagenet.tar.gz", progress=False
    )
    assert path == os.path.join(cache, "imagenet-w32", "state_dict.npz")
    loaded = convert.load_state_dict(path)
    assert sorted(loaded) == sorted(backbone)
    for key, value in backbone.items():
        np.testing.assert_array_equal(loaded[key], value)
    server.stop()
    assert pretrained.imagenet_checkpoint("w32", cache_dir=cache) == path


def test_concurrent_first_use_downloads_and_converts_once(server, tmp_path):
    cache = str(tmp_path / "cache")
    release = tiny_release(f"{server.url}/logocap.tar.gz")
    server.delay_s = 0.5
    results, errors = [], []

    def first_use():
        try:
            results.append(pretrained.checkpoint_path(release, cache_dir=cache, progress=False))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [os.path.join(cache, "tiny", "checkpoint")] * 2
    assert server.requests == ["/logocap.tar.gz"]


def test_weights_that_do_not_fit_the_config(server, tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(archives.PretrainedError, match="does not fit the model of config w32"):
        pretrained.load("w32", cache_dir=cache, url=f"{server.url}/logocap.tar.gz", progress=False)
    assert not os.path.exists(os.path.join(cache, "w32"))
    assert {p for p in listing(cache)} == {".lock", "downloads/", "downloads/logocap.tar.gz"}


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="known: w32, w48"):
        pretrained.load("w64")
    with pytest.raises(ValueError, match="not a plain file name"):
        pretrained.checkpoint_path(
            pretrained.Release("../x", "http://127.0.0.1/a.tar.gz", "m", "tiny")
        )


def test_cli_prints_the_cached_path(server, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    url = f"{server.url}/logocap.tar.gz"
    pretrained.load("w32", cache_dir=cache, url=url, config="tiny", progress=False)
    server.stop()
    capsys.readouterr()
    pretrained_command.main(["w32", "--cache_dir", cache])
    assert capsys.readouterr().out == os.path.join(cache, "w32", "checkpoint") + "\n"
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(
            pretrained_command.main,
            ["w48", "--cache_dir", cache, "--url", closed_port_url(), "--quiet"],
        )
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and ": error: Could not download http://127.0.0.1:" in lines[0], lines


def test_pretrained_option_chooses_the_config_unless_given(tmp_path, capsys):
    image = str(tmp_path / "photo.jpg")
    open(image, "wb").close()
    args, _ = predict.parse_args(["--pretrained", "w48", image, "--output_dir", "out"])
    assert config_flags.get_config_filename(args["config"]) == "w48"
    assert args.config.test.input_size == 640
    args, _ = predict.parse_args(
        [
            "--pretrained",
            "w32",
            "--config",
            "tiny",
            "--config.decode.flip_test=false",
            image,
            "--output_dir",
            "out",
        ]
    )
    assert config_flags.get_config_filename(args["config"]) == "tiny"
    assert args.config.decode.flip_test is False
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(predict.main, [image, "--output_dir", "out"])
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    assert "--config (or --pretrained)" in capsys.readouterr().err
    args, _ = predict.parse_args(
        ["--pretrained", "w32", "--checkpoint", "ckpt", image, "--output_dir", "out"]
    )
    with pytest.raises(errors.UsageError, match="exactly one of"):
        weight_flags.source(args)

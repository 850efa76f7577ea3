"""A local stand-in for the official release: an HTTP server on 127.0.0.1 and archives laid out
like `logocap.tar.gz`, holding the tiny model's official weights (tests/data/golden) as a
torch.save file, so that download, conversion and caching run in seconds.

Used by test_pretrained.py, test_colab.py and test_wheel.py.
"""

import http.server
import io
import os
import socket
import tarfile
import threading
import time
from collections import OrderedDict

import numpy as np
import pth_writer

from logocap_jax.weights import pretrained

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_state_dict.npz")
W32_MEMBER = pretrained.MODELS["w32"].member
TINY_MEMBER = "logocap/logocap-tiny-coco.pth.tar"
# Environment variables that could send a request elsewhere than 127.0.0.1.
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")


class Server:
    """A local HTTP server of in-memory files; can cut a body short or delay it."""

    def __init__(self):
        self.files, self.requests = {}, []
        self.truncate, self.delay_s = False, 0.0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                time.sleep(server.delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # A truncated transfer: half the promised body, then the connection closes.
                self.wfile.write(data[: len(data) // 2] if server.truncate else data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


def closed_port_url(path="/logocap.tar.gz"):
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def make_archive(members) -> bytes:
    """A .tar.gz of (name, data) members: bytes for a file, None for a directory, or
    ('symlink' | 'hardlink', target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.SYMTYPE if data[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tiny_state_dict() -> dict:
    """The tiny model's official weights, {key: array}."""
    with np.load(GOLDEN) as data:
        return {key: data[key] for key in data.files}


def tiny_pth(path: str) -> bytes:
    """The tiny weights as an official-style training checkpoint (DataParallel keys), written
    to `path`; returns the file's bytes."""
    wrapped = OrderedDict((f"module.{k}", v) for k, v in tiny_state_dict().items())
    pth_writer.save({"epoch": 140, "state_dict": wrapped, "best_perf": 0.5}, path)
    with open(path, "rb") as file:
        return file.read()


def logocap_archive(pth: bytes) -> bytes:
    """logocap.tar.gz as released, with `pth` as the tiny and the W32 member: with the tiny
    config, `--pretrained w32` then runs the tiny model."""
    return make_archive(
        [("logocap", None), (TINY_MEMBER, pth), (W32_MEMBER, pth), ("logocap/x", b"")]
    )


def local_only_environment(environment: dict) -> dict:
    """A copy of a subprocess environment without proxies (only 127.0.0.1 is reached)."""
    environment = {k: v for k, v in environment.items() if k not in PROXY_VARIABLES}
    environment["no_proxy"] = "*"
    return environment

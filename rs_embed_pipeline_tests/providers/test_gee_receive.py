"""How computePixels answers are received (``client.ComputePixelsClient``, issue 26): straight
from the socket into one buffer, buffers reused within a fetch, never aliased by a patch."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from rs_embed_pipeline.providers.gee.client import AnswerBuffers, ComputePixelsClient

from . import ee_standin as S
from .gee_fetch import fetch


def test_reused_answer_buffers_never_change_a_yielded_patch(standin, make_provider):
    # 8 tiles, 2 per request, one slot: 4 answers through at most 2 buffers (one receiving
    # while another is cut); a patch viewing a reused buffer would show a later tile's values
    rows = S.tile_rows(4, 2, size_px=16)
    provider = make_provider(max_concurrent_requests=1, max_tiles_per_request=2)
    patches = fetch(provider, rows, bands=["B4", "B8"])
    st = provider.stats()
    assert st["pixel_requests"] == 4
    assert 1 <= st["answer_buffers"] <= 2
    for row in rows:
        p = patches[row["tile_id"]]
        assert p.status == "ok" and p.data.flags.owndata
        np.testing.assert_array_equal(p.data[0], S.expected_band(row, S.S2_BASE["B4"]).astype(np.float32))
        np.testing.assert_array_equal(p.data[1], S.expected_band(row, S.S2_BASE["B8"]).astype(np.float32))
    # one tile per request (a fetch of at most 40 tiles): the same reuse
    provider = make_provider(max_concurrent_requests=1, max_tiles_per_request=1)
    patches = fetch(provider, rows, bands=["B4"])
    st = provider.stats()
    assert st["pixel_requests"] == 8 and 1 <= st["answer_buffers"] <= 2
    for row in rows:
        np.testing.assert_array_equal(patches[row["tile_id"]].data[0],
                                      S.expected_band(row, S.S2_BASE["B4"]).astype(np.float32))


def test_answer_buffers_take_back_only_their_own():
    pool = AnswerBuffers()
    a = pool.take(100)
    assert a.nbytes == 100 and pool.allocated == 1
    pool.give(a.data[:60])
    pool.give(a.data)  # twice: kept once
    assert pool.take(80) is a and pool.allocated == 1  # large enough: reused
    assert pool.take(80) is not a and pool.allocated == 2  # nothing free: a new one
    pool.give(memoryview(b"x" * 100))  # an answer that is not a pool buffer
    pool.give(np.empty(100, np.uint8).data)
    assert pool.take(10).nbytes == 10 and pool.allocated == 3


class _Answers(http.server.BaseHTTPRequestHandler):
    """POST answers by path: /plain (Content-Length), /gzip (Content-Encoding gzip),
    /chunked (no Content-Length), /short (the connection closes mid-answer)."""

    protocol_version = "HTTP/1.1"
    body = bytes(range(256)) * 4096  # 1 MiB
    connections: list[int] = []

    def setup(self) -> None:
        super().setup()
        self.connections.append(1)

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        path = self.path.rsplit("/", 1)[-1]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if path == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for k in range(0, len(self.body), 300_000):
                piece = self.body[k:k + 300_000]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        payload = gzip.compress(self.body) if path == "gzip" else self.body
        if path == "gzip":
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if path == "short":
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return
        self.wfile.write(payload)


@pytest.fixture
def answers() -> Iterator[str]:
    _Answers.connections = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _client(url: str, path: str) -> ComputePixelsClient:
    client = ComputePixelsClient(url, "p", None, timeout_s=10, maxsize=1)
    client.url = f"{url}/{path}"
    return client


@pytest.mark.parametrize("path", ["plain", "gzip", "chunked"])
def test_every_answer_framing_gives_the_bytes_and_keeps_the_connection(answers, path):
    client = _client(answers, path)
    pool = AnswerBuffers()
    for _ in range(3):
        raw = client.compute_pixels({"x": 1}, pool)
        assert bytes(raw) == _Answers.body
        pool.give(raw)
    assert len(_Answers.connections) == 1  # each answer read to its end: the connection reused
    assert pool.allocated == (1 if path == "plain" else 0)  # only sized, undecoded answers use it


def test_an_answer_cut_short_is_a_connection_error(answers):
    with pytest.raises(ConnectionError, match=r"computePixels answer ended after 524288 of 1048576 bytes"):
        _client(answers, "short").compute_pixels({"x": 1})

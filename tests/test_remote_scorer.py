"""The HTTP remote scorer against a stub server on 127.0.0.1: retries, timeouts, 4xx, refused ports, the schema."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from cogrpo.rewards.remote import RemoteScorer, RemoteScorerError, is_remote_spec

IMAGES = [np.full((4, 6, 3), value, dtype=np.uint8) for value in (10, 200)]
PROMPTS = ["a photo of a red circle", "a photo of two crosses"]


class StubServer:
    """An HTTP server in a thread that responds to POSTs from a list of planned replies and records each request.

    A reply is (status, body as JSON data or bytes) or the string "hang", which keeps the connection open until the
    test ends. The last reply repeats. GET requests get ``health``, a (status, body) pair.
    """

    def __init__(self, replies, health=(200, {"name": "stub", "version": "7"})):
        self.replies = list(replies)
        self.health = health
        self.posts: list[dict] = []
        self.gets = 0
        self.release = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):
                stub.gets += 1
                self._reply(*stub.health)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.posts.append(json.loads(body))
                reply = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
                if reply == "hang":
                    stub.release.wait(30)
                    return
                self._reply(*reply)

            def _reply(self, status, body):
                data = json.dumps(body).encode() if not isinstance(body, bytes) else body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _scores(values, errors=None):
    body = {"scores": values}
    if errors is not None:
        body["errors"] = errors
    return (200, body)


def _refused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_request_follows_schema():
    with StubServer([_scores([0.25, 0.75])]) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=5)
        result = scorer.score_detailed(IMAGES, PROMPTS, [{"tag": "single_object"}, None])

    np.testing.assert_array_equal(result.scores, np.asarray([0.25, 0.75], dtype=np.float32))
    assert result.errors == [None, None]
    assert scorer.version == "7"
    assert scorer.server_info == {"name": "stub", "version": "7"}
    (request,) = stub.posts
    assert request["prompts"] == PROMPTS
    assert request["metadata"] == [{"tag": "single_object"}, None]
    for encoded, expected in zip(request["images"], IMAGES):
        with Image.open(io.BytesIO(base64.b64decode(encoded, validate=True))) as image:
            assert image.format == "PNG"
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), expected)


def test_server_error_is_retried(caplog):
    with StubServer([(500, {"error": "model not loaded yet"}), _scores([0.5, 0.6])]) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=5, retries=2, backoff_s=0.01)
        with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.remote"):
            result = scorer.score_detailed(IMAGES, PROMPTS)

    np.testing.assert_allclose(result.scores, [0.5, 0.6])
    assert len(stub.posts) == 2
    assert "HTTP 500" in caplog.text
    assert "retry 1 of 2" in caplog.text


def test_persistent_server_error_fails_batch():
    with StubServer([(503, {"error": "overloaded"})]) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=5, retries=2, backoff_s=0.01)
        result = scorer.score_detailed(IMAGES, PROMPTS)

    assert len(stub.posts) == 3
    assert np.isnan(result.scores).all()
    assert all(error.startswith(f"HTTP 503 from {stub.url}") and "overloaded" in error for error in result.errors)


def test_client_error_is_not_retried(caplog):
    with StubServer([(400, {"error": "missing field 'images'"})]) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=5, retries=3, backoff_s=0.01)
        with caplog.at_level(logging.WARNING, logger="cogrpo.rewards.remote"):
            result = scorer.score_detailed(IMAGES, PROMPTS)

    assert len(stub.posts) == 1
    assert np.isnan(result.scores).all()
    assert result.errors[0] == result.errors[1]
    assert result.errors[0].startswith(f"HTTP 400 from {stub.url}")
    assert "missing field 'images'" in result.errors[0]
    assert "retry" not in caplog.text
    assert "got no scores" in caplog.text


def test_hung_server_times_out_without_retry():
    with StubServer(["hang"]) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=0.5, retries=3, backoff_s=0.01)
        start = time.perf_counter()
        result = scorer.score_detailed(IMAGES, PROMPTS)
        elapsed = time.perf_counter() - start

    assert len(stub.posts) == 1
    assert np.isnan(result.scores).all()
    assert result.errors == ["timed out after 0.5 s"] * 2
    assert elapsed < 5


def test_refused_port_fails_fast_at_construction():
    url = f"http://127.0.0.1:{_refused_port()}/score"
    start = time.perf_counter()
    with pytest.raises(RemoteScorerError) as raised:
        RemoteScorer(url, timeout_s=5, retries=3, backoff_s=1.0)
    elapsed = time.perf_counter() - start

    message = str(raised.value)
    assert url in message
    assert "connection refused" in message
    assert "Start the scoring server" in message
    assert elapsed < 2


def test_stopped_server_retried_then_fails():
    with StubServer([_scores([0.1, 0.2])]) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=2, retries=2, backoff_s=0.01)
    result = scorer.score_detailed(IMAGES, PROMPTS)

    assert np.isnan(result.scores).all()
    assert result.errors == ["connection refused"] * 2


def test_health_check_accepts_post_only_server():
    with StubServer([_scores([1.0, 2.0])], health=(405, b"")) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=5)
        assert scorer.version == "unknown"
        assert scorer.server_info == {}
        np.testing.assert_allclose(scorer.score(IMAGES, PROMPTS), [1.0, 2.0])


def test_health_check_rejects_error_status():
    with StubServer([_scores([1.0, 2.0])], health=(404, {"error": "no route /score"})) as stub:
        with pytest.raises(RemoteScorerError, match="GET returned HTTP 404") as raised:
            RemoteScorer(stub.url, timeout_s=5)
    assert stub.url in str(raised.value)
    assert stub.posts == []


def test_null_scores_fail_only_their_samples():
    replies = [_scores([None, 0.5], errors=["no face found", None]), _scores([0.5, "high"]), _scores([None, 1e999])]
    with StubServer(replies) as stub:
        scorer = RemoteScorer(stub.url, timeout_s=5)
        first = scorer.score_detailed(IMAGES, PROMPTS)
        second = scorer.score_detailed(IMAGES, PROMPTS)
        third = scorer.score_detailed(IMAGES, PROMPTS)

    assert np.isnan(first.scores[0])
    assert first.scores[1] == 0.5
    assert first.errors == ["no face found", None]
    assert second.scores[0] == 0.5
    assert second.errors[1] == "the remote scorer returned 'high', which is not a number"
    assert third.errors[0] == "the remote scorer returned null"
    assert third.errors[1] == "the remote scorer returned inf, which is not a finite float32 score"


def test_scores_beyond_float32_fail_their_samples():
    with StubServer([_scores([1e308, 10**400])]) as stub:
        result = RemoteScorer(stub.url, timeout_s=5).score_detailed(IMAGES, PROMPTS)

    assert np.isnan(result.scores).all()
    assert result.errors[0] == "the remote scorer returned 1e+308, which is not a finite float32 score"
    assert result.errors[1] == "the remote scorer returned an integer of 401 digits, which is not a finite float32 score"


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ((200, b"<html>busy</html>"), "not JSON: <html>busy</html>"),
        (_scores([0.5]), "expected 2 scores, got 1"),
        ((200, {"score": [1, 2]}), "expected 2 scores, got no 'scores' list"),
    ],
)
def test_malformed_response_fails_batch(reply, words):
    with StubServer([reply]) as stub:
        result = RemoteScorer(stub.url, timeout_s=5).score_detailed(IMAGES, PROMPTS)

    assert np.isnan(result.scores).all()
    assert all(words in error for error in result.errors)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "ftp://127.0.0.1/score"}, "invalid remote scorer URL"),
        ({"url": "http:///score"}, "invalid remote scorer URL"),
        ({"timeout_s": 0}, "invalid timeout_s=0"),
        ({"retries": -1}, "invalid retries=-1"),
        ({"backoff_s": -1}, "invalid backoff_s=-1"),
    ],
)
def test_invalid_settings_rejected(options, message):
    arguments = {"url": "http://127.0.0.1:9/score", "health_check": False, **options}
    with pytest.raises(ValueError, match=message):
        RemoteScorer(**arguments)


def test_reward_spec_recognises_urls():
    from cogrpo.rl.run import build_reward

    assert is_remote_spec("http://127.0.0.1:8000/score")
    assert is_remote_spec(" HTTPS://scorer.internal/score")
    assert not is_remote_spec("hps=1,imagereward=0.5")
    with StubServer([_scores([0.5, 0.5])]) as stub:
        scorer = build_reward(stub.url, timeout_s=9)
    assert isinstance(scorer, RemoteScorer)
    assert scorer.timeout_s == 9


def test_score_cli_uses_remote_scorer(tmp_path):
    from typer.testing import CliRunner

    from cogrpo.cli import app

    paths = []
    for index, image in enumerate(IMAGES):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    with StubServer([_scores([0.125, None], errors=[None, "blurry"])]) as stub:
        result = CliRunner().invoke(app, ["score", "--reward", stub.url, "--prompt", PROMPTS[0], *map(str, paths)])

    assert result.exit_code == 0, result.output
    assert "0.125000" in result.output
    assert "blurry" in result.output
    assert stub.posts[0]["prompts"] == [PROMPTS[0], PROMPTS[0]]


def test_train_cli_refused_reward_url_fails_clearly(tmp_path, random_shapes_dir):
    from typer.testing import CliRunner

    from cogrpo.cli import app

    url = f"http://127.0.0.1:{_refused_port()}/score"
    result = CliRunner().invoke(app, ["train", "--reward", url, "--model-path", str(random_shapes_dir), "--device", "cpu",
                                      "--iterations", "1", "--no-final-eval", "--out", str(tmp_path / "run")])

    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert url in text
    assert "connection refused" in text

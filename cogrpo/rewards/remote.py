"""A scorer served over HTTP, selected with ``--reward http://HOST:PORT/PATH`` (or ``https://``).

Protocol (JSON in UTF-8 over HTTP/1.1), one URL for both requests:

Health check, once when the scorer is built: ``GET URL``. A 2xx response passes.
So does 405 Method Not Allowed, so that a server which accepts only POST works. A
2xx body may be a JSON object with ``"name"`` and ``"version"`` strings. The
version becomes the scorer's ``version``, and both are kept in ``server_info``.

Scoring, one request per batch: ``POST URL`` with ``Content-Type: application/json``
and the body::

    {"prompts":  ["a photo of a red circle", ...],
     "images":   ["<base64 of a PNG>", ...],
     "metadata": [{"tag": "single_object", ...}, null, ...]}

The three lists have one element per image, in the same order. Images are RGB
PNGs with 8 bits per channel, encoded in standard base64 (RFC 4648, with padding).
``metadata`` contains the GenEval-style entry of a prompt, or null. The server
responds with status 200 and the body::

    {"scores": [0.71, null, ...],
     "errors": [null, "no face found", ...]}

``scores`` has one number per image, or null for a sample the server could not
score. ``errors`` is optional, with one message or null per image.

The failures below do not raise from a scoring call. The failing samples get a
NaN score and an error message, so that the trainer and ``cogrpo eval`` count them:

- Connection errors (refused, reset, closed before the response) and HTTP 5xx are
  retried ``retries`` times, after ``backoff_s``, then twice as long, and so on.
  When all attempts fail, every sample of the batch fails with the last error.
- HTTP 4xx is not retried, because the same request would be rejected again.
  Every sample fails with the status and the start of the response body.
- A timeout is not retried, because a retry would wait as long again.
- A response that is not JSON or has the wrong number of scores fails the batch.
- A null, non-numeric or non-finite score fails that sample only.

The health check fails fast instead: a refused connection, a timeout or an
error status raises ``RemoteScorerError`` naming the URL, without retries.

``timeout_s`` applies to each socket operation (connect, send and each read), as
in ``urllib``, so a server that keeps sending a slow trickle of bytes can take
longer. ``GuardedScorer`` (which the trainer and ``cogrpo eval`` wrap around every
scorer) bounds the whole call. Requests go straight to the host: the proxy
environment variables (``http_proxy`` and others) are ignored.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cogrpo.rewards.base import Scorer, ScoreResult

logger = logging.getLogger(__name__)

# Maximum characters of a response body quoted in error messages.
_BODY_EXCERPT = 300


class RemoteScorerError(ConnectionError):
    """A remote scorer that failed its health check because it was unreachable, timed out or returned an error status."""


def is_remote_spec(spec: str) -> bool:
    """Return True when a ``--reward`` value is an http(s) URL."""
    return spec.strip().lower().startswith(("http://", "https://"))


@dataclass
class _Failure:
    message: str
    retryable: bool


class RemoteScorer(Scorer):
    """Scorer that POSTs images to an HTTP server. The module docstring describes the protocol."""

    name = "remote"
    version = "unknown"

    def __init__(self, url: str, timeout_s: float | None = 300.0, retries: int = 3, backoff_s: float = 0.5,
                 health_check: bool = True):
        """Validate the arguments and, unless ``health_check`` is False, check that the server responds to ``GET url``.

        ``timeout_s`` of None disables the timeout. ``retries`` counts the attempts after the first one.
        Raises ``ValueError`` for invalid arguments and ``RemoteScorerError`` when the health check fails.
        """
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            raise ValueError(f"invalid remote scorer URL {url!r}; expected http://HOST:PORT/PATH or https://...")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"invalid timeout_s={timeout_s}; expected seconds > 0, or None for no timeout")
        if retries < 0:
            raise ValueError(f"invalid retries={retries}; expected an integer >= 0")
        if backoff_s < 0:
            raise ValueError(f"invalid backoff_s={backoff_s}; expected seconds >= 0")
        self.url = url.strip()
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.server_info: dict[str, Any] = self.check_health() if health_check else {}
        if isinstance(self.server_info.get("version"), str):
            self.version = self.server_info["version"]

    # ------------------------------------------------------------------ health check

    def check_health(self) -> dict[str, Any]:
        """Send ``GET url`` once and return the server's JSON object, or {} when the body is not one.

        Raises ``RemoteScorerError`` without retrying when the server is unreachable, times out or returns an error status.
        """
        request = urllib.request.Request(self.url, method="GET", headers={"Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 405:
                return {}
            raise RemoteScorerError(
                f"remote scorer {self.url} failed its health check: GET returned HTTP {error.code} "
                f"{_excerpt(_read_body(error))}. Check the URL and the server's log."
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            failure = _transport_failure(error, self.timeout_s)
            raise RemoteScorerError(
                f"remote scorer {self.url} is not reachable: {failure.message}. Start the scoring server, or fix "
                f"the URL or port in --reward."
            ) from None
        try:
            info = json.loads(body)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    # ------------------------------------------------------------------ scoring

    def score_batch(self, images: list[np.ndarray], prompts: list[str], metadata: list[dict | None]) -> ScoreResult:
        """POST the batch and return its scores. Failed samples get NaN and an error message instead of an exception."""
        count = len(images)
        try:
            body = json.dumps({"prompts": list(prompts), "images": [_png_base64(image) for image in images],
                               "metadata": list(metadata)}, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as error:
            return _failed(count, f"cannot encode the request as JSON: {error}")

        outcome: bytes | _Failure = _Failure("not sent", retryable=False)
        for attempt in range(self.retries + 1):
            outcome = self._post(body)
            if isinstance(outcome, bytes):
                return self._parse(outcome, count)
            if not outcome.retryable or attempt == self.retries:
                break
            delay = self.backoff_s * 2**attempt
            logger.warning("remote scorer %s: %s; retry %d of %d in %.1f s", self.url, outcome.message,
                           attempt + 1, self.retries, delay)
            time.sleep(delay)
        logger.error("remote scorer %s: a batch of %d images got no scores: %s", self.url, count, outcome.message)
        return _failed(count, outcome.message)

    def _post(self, body: bytes) -> bytes | _Failure:
        """Send one POST and return the response body, or the failure and whether a retry may help."""
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            message = f"HTTP {error.code} from {self.url}: {_excerpt(_read_body(error))}"
            return _Failure(message, retryable=error.code >= 500)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            return _transport_failure(error, self.timeout_s)

    def _parse(self, raw: bytes, count: int) -> ScoreResult:
        try:
            data = json.loads(raw)
        except ValueError:
            return _failed(count, f"invalid response from {self.url}: not JSON: {_excerpt(raw)}")
        scores = data.get("scores") if isinstance(data, dict) else None
        if not isinstance(scores, list) or len(scores) != count:
            found = str(len(scores)) if isinstance(scores, list) else "no 'scores' list"
            return _failed(count, f"invalid response from {self.url}: expected {count} scores, got {found}")
        errors = data.get("errors")
        if not (isinstance(errors, list) and len(errors) == count):
            errors = [None] * count

        values = np.full(count, np.nan, dtype=np.float32)
        messages: list[str | None] = [None] * count
        for index, value in enumerate(scores):
            reason = errors[index] if isinstance(errors[index], str) and errors[index] else None
            if value is None:
                messages[index] = reason or "the remote scorer returned null"
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                messages[index] = f"the remote scorer returned {value!r}, which is not a number"
            elif not _fits_float32(value):
                described = repr(value) if isinstance(value, float) else f"an integer of {len(str(abs(value)))} digits"
                messages[index] = f"the remote scorer returned {described}, which is not a finite float32 score"
            else:
                values[index] = value
        failed = sum(message is not None for message in messages)
        if failed:
            logger.warning("remote scorer %s: %d of %d samples got no score, e.g. %s", self.url, failed, count,
                           next(message for message in messages if message))
        return ScoreResult(scores=values, errors=messages, details=[{} for _ in range(count)])


def _transport_failure(error: BaseException, timeout_s: float | None) -> _Failure:
    """Classify a urllib or socket error. Timeouts are not retried, and other connection errors are."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return _Failure("timed out" + (f" after {timeout_s:g} s" if timeout_s else ""), retryable=False)
    if isinstance(reason, ConnectionRefusedError):
        return _Failure("connection refused", retryable=True)
    return _Failure(f"connection failed: {type(reason).__name__}: {reason}", retryable=True)


def _read_body(error: urllib.error.HTTPError) -> bytes:
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def _excerpt(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."


def _png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _fits_float32(value: int | float) -> bool:
    """Return True when ``value`` is finite as a float32 (JSON integers may be far larger than any float)."""
    try:
        as_float = float(value)
    except OverflowError:
        return False
    return math.isfinite(as_float) and abs(as_float) <= float(np.finfo(np.float32).max)


def _failed(count: int, error: str) -> ScoreResult:
    return ScoreResult(scores=np.full(count, np.nan, dtype=np.float32), errors=[error] * count,
                       details=[{} for _ in range(count)])

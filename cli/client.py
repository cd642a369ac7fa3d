"""genq's HTTP API over ``requests``: one method per route the CLI uses, and one error.

Every failure becomes an :class:`ApiError` whose message is one line: the API's own
words (``{"error": {"message"}}`` on the files and batches routes, ``{"detail": …}``
elsewhere) after the status code. The key travels only in the ``Authorization`` header
and is never part of a message. A POST that carries an ``Idempotency-Key``, and every
GET, is retried a few times when the API cannot be reached or answers 502/503/504: the
key makes a retried create return what the first one made.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import requests

from cli.models import Batch, Circuit, Job

__all__ = ["ApiError", "GenqClient", "describe_error"]

#: Statuses worth retrying: the API (or Redis behind it) is briefly unavailable.
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_WAITS_S = (0.5, 1.0, 2.0)
MAX_RETRY_AFTER_S = 5.0


class ApiError(Exception):
    """A call that failed; ``status`` is None when the API could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @property
    def transient(self) -> bool:
        """Whether trying again later may work (unreachable, 5xx, 429)."""
        return self.status is None or self.status >= 500 or self.status == 429


def _detail_text(detail: object) -> str:
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p not in ("body", "query", "path")]
                where = ".".join(loc)
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def describe_error(status: int, body: object, text: str = "") -> str:
    """One line for a failed response: ``HTTP <status>: <the API's message>``."""
    message = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif "detail" in body:
            message = _detail_text(body["detail"])
    if not message:
        message = " ".join(text.split())[:200] or "no details"
    return f"HTTP {status}: {message}"


class GenqClient:
    """A client of one genq API with one key."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout_s: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session or requests.Session()
        self._timeout = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._headers["User-Agent"] = "genq-cli"

    def __repr__(self) -> str:  # never the key
        return f"GenqClient({self.base_url!r})"

    # Transport ------------------------------------------------------------------

    def request(
        self, method: str, path: str, *, retry: bool = False, **kwargs: Any
    ) -> requests.Response:
        """One call, retried on transient failures when ``retry``; raises ApiError."""
        headers = {**self._headers, **kwargs.pop("headers", {})}
        waits = RETRY_WAITS_S if retry else ()
        # 409 with our (per-run) key: the first try is still being processed.
        again = RETRY_STATUSES | ({409} if "Idempotency-Key" in headers else set())
        for attempt in range(len(waits) + 1):
            try:
                resp = self._session.request(
                    method, self.base_url + path, headers=headers, timeout=self._timeout, **kwargs
                )
            except requests.RequestException as exc:
                if attempt < len(waits):
                    time.sleep(waits[attempt])
                    continue
                raise ApiError(_unreachable(self.base_url, exc, self._timeout)) from exc
            if resp.status_code in again and attempt < len(waits):
                time.sleep(_retry_wait(resp, waits[attempt]))
                continue
            if resp.status_code >= 400:
                raise ApiError(_describe(resp), resp.status_code)
            return resp
        raise AssertionError("unreachable")  # pragma: no cover

    def json(self, method: str, path: str, *, retry: bool = False, **kwargs: Any) -> Any:
        resp = self.request(method, path, retry=retry, **kwargs)
        try:
            return resp.json()
        except ValueError as exc:
            raise ApiError(f"HTTP {resp.status_code}: the answer is not JSON") from exc

    # Files and batches ----------------------------------------------------------

    def upload(self, name: str, data: bytes, idempotency_key: str) -> str:
        """Upload a batch input file; its id."""
        body = self.json(
            "POST",
            "/v1/files",
            retry=True,
            files={"file": (name, data, "application/jsonl")},
            data={"purpose": "batch"},
            headers={"Idempotency-Key": idempotency_key},
        )
        return str(body["id"])

    def create_batch(
        self, file_id: str, endpoint: str, idempotency_key: str, metadata: dict[str, str] | None
    ) -> Batch:
        payload: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": endpoint,
            "completion_window": "24h",
        }
        if metadata:
            payload["metadata"] = metadata
        headers = {"Idempotency-Key": idempotency_key}
        body = self.json("POST", "/v1/batches", retry=True, json=payload, headers=headers)
        return Batch.model_validate(body)

    def batch(self, batch_id: str) -> Batch:
        return Batch.model_validate(self.json("GET", f"/v1/batches/{batch_id}", retry=True))

    def cancel_batch(self, batch_id: str) -> Batch:
        # Cancelling twice is harmless, so the POST may be retried.
        body = self.json("POST", f"/v1/batches/{batch_id}/cancel", retry=True)
        return Batch.model_validate(body)

    def batches(self, limit: int) -> list[Batch]:
        body = self.json("GET", "/v1/batches", retry=True, params={"limit": limit})
        return [Batch.model_validate(b) for b in body.get("data", [])]

    def file_lines(self, file_id: str) -> list[str]:
        """A file's non-empty lines (a batch's output so far, or an upload)."""
        resp = self.request("GET", f"/v1/files/{file_id}/content", retry=True)
        return [line for line in resp.content.decode("utf-8").splitlines() if line.strip()]

    # Jobs and circuits ----------------------------------------------------------

    def submit(self, body: dict[str, Any], idempotency_key: str) -> Job:
        headers = {"Idempotency-Key": idempotency_key}
        return Job.model_validate(
            self.json("POST", "/v1/jobs", retry=True, json=body, headers=headers)
        )

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self.json("GET", f"/v1/jobs/{job_id}", retry=True))

    def circuits(self) -> list[Circuit]:
        return [Circuit.model_validate(c) for c in self.json("GET", "/v1/circuits", retry=True)]

    def control_circuit(self, name: str, action: str) -> Circuit:
        """``open``, ``close`` or ``reset`` (an admin key)."""
        path = f"/v1/circuits/{quote(name, safe='')}/{action}"
        return Circuit.model_validate(self.json("POST", path))


def _describe(resp: requests.Response) -> str:
    try:
        body: object = resp.json()
    except ValueError:
        body = None
    return describe_error(resp.status_code, body, resp.text)


def _unreachable(base_url: str, exc: requests.RequestException, timeout_s: float) -> str:
    if isinstance(exc, requests.Timeout):
        return f"no answer from {base_url} within {timeout_s:g} s"
    return f"cannot reach {base_url} ({type(exc).__name__})"


def _retry_wait(resp: requests.Response, default: float) -> float:
    try:
        given = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return default
    return min(max(given, default), MAX_RETRY_AFTER_S)

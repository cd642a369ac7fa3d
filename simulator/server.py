"""An upstream simulator for development and tests: a stand-in HTTP server, not a model.

It speaks hf (``POST /models/{model}``), tgi (``POST /generate``, ``POST /``) and openai
(``POST /v1/chat/completions``, ``POST /v1/completions``) as ``simulator.protocols`` reads
and ``simulator.answers`` renders them; every answer is :func:`simulated_text` of the
prompt. Faults and capacity (``simulator.behaviour``) are switched at run time through
``POST /_sim/config``,
``POST /_sim/reset``, ``GET /_sim/stats``, ``GET /_sim/health``, or :class:`SimulatorServer`.
Every generation call passes a capacity gate first: it takes a place, is turned away with
429, or queues for a place, and holds its place until its answer goes out; the stats count
the calls in flight, queued and open at once, so that a test can see a client's concurrency.
Stdlib only. TCP_NODELAY and HTTP/1.1 keep-alive: sequential calls on one connection
must not stall ~40 ms each on Nagle's algorithm meeting delayed ACKs.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from simulator.answers import simulated_text, stream_events
from simulator.behaviour import Call, Overflow, Reply, SimulatorConfig, decide, over_capacity
from simulator.protocols import DEFAULT_MODEL, BadRequest, Request, Route, parse_request, route

__all__ = ["SimulatorServer", "simulated_text"]

GENERATION_ROUTES = (
    "/, /generate, /models/{model}, /models/{model}/v1/chat/completions, "
    "/v1/chat/completions, /v1/completions"
)


def _call(target: Route, sent_to: str, raw: bytes) -> Call:
    """The generation call that ``raw`` makes on ``target``, readable or not."""
    try:
        request: Request | BadRequest = parse_request(target, raw)
    except BadRequest as exc:
        request = exc
    model = target.model or (request.model if isinstance(request, Request) else DEFAULT_MODEL)
    return Call(target, model, sent_to, request)


def _bearer(header: str | None) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


class Control:
    """The simulator's shared state behind one lock, never held while a call sleeps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a place freed, or the rules changed
        self._config = SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        self._calls = 0
        self._outcomes: Counter[str] = Counter()
        self._stopping = False
        self._in_flight = self._waiting = self._open = 0  # gauges: reset leaves them
        self._peak_in_flight = self._peak_concurrent = self._over_capacity = 0
        # Same prompt again: how often a client asked twice, and twice at once.
        self._asked: set[str] = set()
        self._asking: Counter[str] = Counter()  # prompts of the calls open now
        self._repeated = self._overlapping = 0

    def configure(self, changes: object) -> dict[str, object]:
        """Merge ``changes`` (all or nothing) and return the whole configuration."""
        with self._lock:
            self._config = self._config.merged(changes)
            if isinstance(changes, Mapping) and "seed" in changes:
                self._rng.seed(self._config.seed)
            self._freed.notify_all()  # queued calls re-check capacity and overflow
            return self._config.as_dict()

    def reset(self) -> dict[str, object]:
        """Default configuration, a fresh RNG, zero counters and peaks; returns the configuration.

        Calls holding a place keep it: the peaks restart from what is open now.
        """
        with self._lock:
            self._config, self._calls = SimulatorConfig(), 0
            self._rng.seed(self._config.seed)
            self._outcomes.clear()
            self._over_capacity = self._repeated = self._overlapping = 0
            self._asked.clear()
            self._peak_in_flight, self._peak_concurrent = self._in_flight, self._open
            self._freed.notify_all()  # no capacity any more: queued calls go through
            return self._config.as_dict()

    @property
    def config(self) -> SimulatorConfig:
        """The configuration now (frozen: a copy that later changes do not touch)."""
        with self._lock:
            return self._config

    def stop(self) -> None:
        """Drop the queued calls and any that arrive from now on: the server is stopping."""
        with self._lock:
            self._stopping = True
            self._freed.notify_all()

    def stats(self) -> dict[str, object]:
        """Calls received, ``by_outcome``, the capacity gauges and peaks, and the ``config``."""
        with self._lock:
            return {
                "calls": self._calls,
                "by_outcome": dict(self._outcomes),
                "in_flight": self._in_flight,
                "peak_in_flight": self._peak_in_flight,
                "waiting": self._waiting,
                "peak_concurrent": self._peak_concurrent,
                "over_capacity": self._over_capacity,
                "repeated": self._repeated,
                "overlapping": self._overlapping,
                "config": self._config.as_dict(),
            }

    @contextlib.contextmanager
    def admit(self, token: str | None, call: Call) -> Iterator[tuple[Reply, Callable[[], None]]]:
        """Pass one generation call through the capacity gate, count it, decide its answer.

        Yields the reply and ``leave``: the call is open, and holds its place if it got one,
        until ``leave()`` or the end of the ``with`` block, whichever comes first. A call
        queued when the server stops is dropped, uncounted.
        """
        refusal: Reply | None = Reply(0, drop=True)  # until the gate says otherwise
        left = False
        prompt = call.request.prompt if isinstance(call.request, Request) else None

        def leave() -> None:
            nonlocal left
            if left:
                return
            left = True
            with self._lock:
                self._open -= 1
                if prompt is not None:
                    self._asking[prompt] -= 1
                    if not self._asking[prompt]:
                        del self._asking[prompt]
                if refusal is None:  # it held a place
                    self._in_flight -= 1
                    self._freed.notify()

        try:
            with self._lock:
                self._open += 1
                self._peak_concurrent = max(self._peak_concurrent, self._open)
                if prompt is not None:
                    self._repeated += prompt in self._asked
                    self._overlapping += self._asking[prompt] > 0
                    self._asked.add(prompt)
                    self._asking[prompt] += 1
                refusal = self._pass_gate(call)
                reply = self._decide(token, call) if refusal is None else refusal
            yield reply, leave
        finally:
            leave()

    def _pass_gate(self, call: Call) -> Reply | None:
        """With the lock held: take a place (None), or the answer of a call turned away.

        In overflow mode ``queue`` this waits, the lock released, until a place is free;
        a call arriving while others are queued queues behind them.
        """
        queued = False
        try:
            while not self._stopping:
                capacity = self._config.capacity
                if capacity is None or (
                    self._in_flight < capacity and (queued or not self._waiting)
                ):
                    self._in_flight += 1
                    self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
                    return None
                if self._config.overflow is Overflow.REJECT:
                    self._calls += 1
                    self._over_capacity += 1
                    reply = over_capacity(self._config, call)
                    self._outcomes[reply.outcome] += 1
                    return reply
                if not queued:
                    queued, self._waiting = True, self._waiting + 1
                self._freed.wait()
            return Reply(0, drop=True)
        finally:
            if queued:
                self._waiting -= 1

    def _decide(self, token: str | None, call: Call) -> Reply:
        """With the lock held: count one admitted call and decide its answer."""
        self._calls += 1
        load = self._in_flight - 1  # the other calls holding a place
        reply, self._config = decide(self._config, self._rng.random, token, call, load)
        self._outcomes[reply.outcome] += 1
        return reply


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a line per request would drown test and benchmark output."""

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_sim/health":
            self._send(200, {"ok": True})
        elif path == "/_sim/stats":
            self._send(200, self.server.control.stats())
        else:
            self._send(404, {"error": f"no GET route {path}; see /_sim/health"})

    def do_POST(self) -> None:
        raw = self._read_body()
        path = urlsplit(self.path).path
        target = route(unquote(path))
        if target is not None:
            self._generate(_call(target, self.path, raw))
        elif path == "/_sim/config":
            self._configure(raw)
        elif path == "/_sim/reset":
            self._send(200, self.server.control.reset())
        else:
            routes = f"{GENERATION_ROUTES}, /_sim/config, /_sim/reset"
            self._send(404, {"error": f"no POST route {path}; try {routes}"})

    def _generate(self, call: Call) -> None:
        token = _bearer(self.headers.get("Authorization"))
        with self.server.control.admit(token, call) as (reply, leave):
            if reply.delay_s > 0 and self.server.stopping.wait(reply.delay_s):
                reply = Reply(0, drop=True)  # the server is stopping: answer nothing
            # The place is given back as the answer goes out, not after: a client that has
            # its answer and calls again at once must not find its old call still counted.
            leave()
            if reply.drop:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
            elif reply.status == 200 and isinstance(call.request, Request) and call.request.stream:
                self._stream(call.route, call.request)
            else:
                self._send(reply.status, reply.body, reply.headers)

    def _stream(self, target: Route, request: Request) -> None:
        """The answer as server-sent events, ``token_ms`` apart; the connection closes
        after them (or after ``stream_cut_after`` of them, with no end)."""
        config = self.server.control.config
        answer = stream_events(target, request)
        # Generating takes time, saying it is over does not: a token event (TGI's, each
        # a token) waits token_ms; OpenAI's finish, usage and [DONE] follow at once.
        pieces = _pieces(answer) if target.family == "openai" else len(answer)
        paced = [i < pieces for i in range(len(answer))]
        events = [f"data: {json.dumps(e)}\n\n".encode() for e in answer]
        if target.family == "openai":
            events.append(b"data: [DONE]\n\n")
            paced.append(False)
        cut = config.stream_cut_after
        self.close_connection = True
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for n, event in enumerate(events):
                if cut is not None and n >= cut:
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                pace = n and paced[n] and config.token_ms
                if pace and self.server.stopping.wait(config.token_ms / 1000):
                    return
                self.wfile.write(event)
                self.wfile.flush()
        except OSError:  # the client went away mid-answer
            return

    def _configure(self, raw: bytes) -> None:
        try:
            self._send(200, self.server.control.configure(json.loads(raw or b"{}")))
        except ValueError as exc:  # invalid JSON or a ConfigError
            self._send(400, {"error": f"bad simulator config: {exc}"})

    def _read_body(self) -> bytes:
        # The clients genq uses send a Content-Length; chunked bodies are not supported.
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: object, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer ``body`` as JSON; None answers an empty body (a redirect)."""
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (e.g. timed out during a hang)
            self.close_connection = True


def _pieces(events: list[object]) -> int:
    """How many of OpenAI's chunks carry a piece of text (they come first)."""
    return sum(1 for e in events if isinstance(e, dict) and e.get("choices") and _has_text(e))


def _has_text(event: dict[str, Any]) -> bool:
    choice = event["choices"][0]
    return bool(choice.get("text") or (choice.get("delta") or {}).get("content"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging call never blocks stop() or interpreter exit
    # socketserver's listen backlog is 5: hundreds of benchmark clients connecting at once
    # would overflow it, and the kernel would drop their SYNs (a 1 s+ retransmit stall).
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], control: Control) -> None:
        self.control = control
        self.stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Without this, a body sent after its headers waits for a delayed ACK (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._open_lock:
            self._open.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open keep-alive connection so that clients see the server gone."""
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hang up; fine
            super().handle_error(request, client_address)


class SimulatorServer:
    """The simulator on a loopback port, served from a daemon thread; a context manager.

    The port is bound at construction (``port=0`` picks a free one), so ``url`` is known
    before ``start()``. A stopped server cannot be started again.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._control = Control()
        self._httpd = _Server((host, port), self._control)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8081``."""
        return f"http://{self._httpd.server_name}:{self._httpd.server_port}"

    def start(self) -> SimulatorServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is not None or self._httpd.stopping.is_set():
            raise RuntimeError("this SimulatorServer was already started")
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hanging and queued calls, close the port and every connection."""
        self._httpd.stopping.set()
        self._control.stop()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
            self._thread = None
        self._httpd.server_close()
        self._httpd.close_connections()

    def configure(self, **changes: object) -> dict[str, object]:
        """Like ``POST /_sim/config``: merge ``changes`` and return the whole configuration."""
        return self._control.configure(changes)

    def reset(self) -> None:
        """Like ``POST /_sim/reset``: default configuration, zero counters and peaks."""
        self._control.reset()

    def stats(self) -> dict[str, object]:
        """Like ``GET /_sim/stats``: ``calls``, ``by_outcome``, ``in_flight``,
        ``peak_in_flight``, ``waiting``, ``peak_concurrent``, ``over_capacity``,
        ``repeated`` (calls with a prompt asked before), ``overlapping`` (calls with a
        prompt another open call asks), ``config``."""
        return self._control.stats()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

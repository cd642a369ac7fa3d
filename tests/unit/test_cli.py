"""The ``genq`` CLI's pure parts: input conversion, errors, settings, the circuit watch,
rendering, result files, the Ctrl-C path of ``batch run`` against a fake client, and
the command line itself: --version, --json, help at 80 columns."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import requests
import typer
from pydantic import ValidationError
from rich.console import Console
from typer.testing import CliRunner

from cli import batch as batch_module
from cli import client as client_module
from cli import commands as commands_module
from cli.batch import EXIT_DETACHED, RunOptions, default_output, run_batch
from cli.client import ApiError, GenqClient, describe_error
from cli.lines import CHAT, COMPLETIONS, InputError, normalize_endpoint, prepare_input
from cli.main import app
from cli.models import Batch, Circuit
from cli.render import line_errors, status_line, summary_table
from cli.results import circuits_named, order_lines
from cli.settings import CliSettings
from cli.watch import CircuitWatch, state_text, worst

SECRET = "sk-unit-test-key-0123456789"


def rendered(renderable: Any, width: int = 200) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def batch_of(**fields: Any) -> Batch:
    base: dict[str, Any] = {
        "id": "batch_1",
        "status": "in_progress",
        "output_file_id": "file-out",
        "error_file_id": "file-err",
        "request_counts": {"total": 10, "completed": 4, "failed": 1},
        "genq": {"counts_by_source": {"upstream": 2, "cache": 1, "excerpt": 1}, "cancelled": 0},
    }
    return Batch.model_validate({**base, **fields})


def circuit(state: str, name: str = "hf~sim~m", **fields: Any) -> Circuit:
    return Circuit.model_validate({"name": name, "state": state, **fields})


def output_line(custom_id: str, source: str = "upstream", circuit: str | None = None) -> str:
    genq = {"source": source, "degraded": source != "upstream", "circuit": circuit}
    body = {"object": "text_completion", "choices": [{"text": "t"}], "genq": genq}
    response = {"status_code": 200, "body": body}
    return json.dumps({"id": "r", "custom_id": custom_id, "response": response, "error": None})


# Input lines --------------------------------------------------------------------------


def test_prompt_lines_become_completions_lines_numbered_by_file_line() -> None:
    """``{"prompt"}`` lines become /v1/completions request lines with custom_id
    ``line-<n>``, other fields kept in the body, blank lines kept so numbers match."""
    context = '[{"id": "d", "text": "x"}]'
    text = f'{{"prompt": "a", "max_tokens": 5}}\n\n{{"prompt": "b", "context": {context}}}\n'
    prepared = prepare_input(text)
    lines = prepared.data.decode().splitlines()
    assert prepared.endpoint == COMPLETIONS
    assert prepared.custom_ids == ["line-1", "line-3"]
    assert prepared.converted == 2
    assert lines[1] == ""
    first, third = json.loads(lines[0]), json.loads(lines[2])
    assert first == {
        "custom_id": "line-1",
        "method": "POST",
        "url": COMPLETIONS,
        "body": {"prompt": "a", "max_tokens": 5},
    }
    assert third["body"]["context"] == [{"id": "d", "text": "x"}]


def test_openai_lines_are_sent_byte_for_byte_and_set_the_endpoint() -> None:
    """OpenAI batch lines pass unchanged, and the first one's url is the endpoint."""
    line = (
        '{"custom_id": "c1", "method": "POST", "url": "/v1/chat/completions", '
        '"body": {"messages": [{"role": "user", "content": "hi"}]}}'
    )
    prepared = prepare_input(line + "\n")
    assert prepared.endpoint == CHAT
    assert prepared.data == (line + "\n").encode()
    assert prepared.custom_ids == ["c1"]
    assert prepared.converted == 0


def test_a_forced_chat_endpoint_turns_prompts_into_user_messages() -> None:
    """With ``--endpoint chat``, a prompt line becomes a chat line with one user message."""
    prepared = prepare_input('{"prompt": "hello", "custom_id": "mine"}\n', endpoint="chat")
    line = json.loads(prepared.data)
    assert prepared.endpoint == CHAT
    assert line["custom_id"] == "mine"
    assert line["body"] == {"messages": [{"role": "user", "content": "hello"}]}


def test_lines_that_are_not_json_objects_are_left_for_the_api_to_report() -> None:
    """Invalid JSON and JSON that is no object are sent as they are (the API names them)."""
    text = '{not json\n["prompt", "x"]\n'
    assert prepare_input(text).data.decode() == text


@pytest.mark.parametrize(
    "line", ['{"promt": "hi", "custom_id": "a"}', '{"promt": "hi"}', '{"Prompt": "hi"}']
)
def test_a_misspelled_prompt_is_reported_as_that(line: str) -> None:
    """A prompt line with a typo is refused before upload as an unknown field with the
    field it may mean, never as a missing custom_id."""
    with pytest.raises(InputError) as caught:
        prepare_input(f'{{"prompt": "fine"}}\n{line}\n')
    key = json.loads(line).keys() - {"custom_id"}
    assert caught.value.problems == [
        f'line 2: unknown field "{key.pop()}" (did you mean "prompt"?)'
    ]


def test_an_object_of_neither_shape_says_what_a_line_needs() -> None:
    """An object with neither a prompt nor request fields, and nothing like them, is
    refused naming the two shapes; every such line is listed, each with its number."""
    with pytest.raises(InputError) as caught:
        prepare_input('{"question": "x"}\n\n{"costum_id": "a", "mthod": "POST"}\n')
    assert caught.value.problems == [
        'line 1: no "prompt" (a prompt line), nor "method", "url" and "body" '
        "(an OpenAI request line)",
        'line 3: unknown field "costum_id" (did you mean "custom_id"?); '
        'unknown field "mthod" (did you mean "method"?)',
    ]


def test_batch_run_with_a_misspelled_prompt_sends_nothing(tmp_path: Path) -> None:
    """``genq batch run`` on a file with ``{"promt": …}``: exit 1, the line and the typo on
    stderr, and no request made (the API's address answers nothing)."""
    source = tmp_path / "typo.jsonl"
    source.write_text('{"promt": "hi"}\n')
    env = {"GENQ_API_URL": "http://127.0.0.1:9", "GENQ_API_KEY": SECRET}
    result = CliRunner().invoke(app, ["batch", "run", str(source)], env=env)
    assert result.exit_code == 1
    assert f'{source}: line 1: unknown field "promt" (did you mean "prompt"?)' in result.stderr
    assert "nothing was sent" in result.stderr
    assert "custom_id" not in result.output and "cannot reach" not in result.output


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("completions", COMPLETIONS),
        ("/v1/completions", COMPLETIONS),
        ("chat", CHAT),
        ("/v1/chat/completions", CHAT),
    ],
)
def test_endpoint_names_are_normalized(given: str, expected: str) -> None:
    """Short names and full paths name the two batch endpoints."""
    assert normalize_endpoint(given) == expected


def test_an_unknown_endpoint_is_refused() -> None:
    """Embeddings (or anything else) is not a batch endpoint genq serves."""
    with pytest.raises(ValueError, match="endpoint must be"):
        normalize_endpoint("/v1/embeddings")


def test_default_output_sits_next_to_the_input() -> None:
    """``prompts.jsonl`` → ``prompts.results.jsonl`` in the same directory."""
    assert default_output(Path("/d/prompts.jsonl")) == Path("/d/prompts.results.jsonl")


# Errors and the HTTP client -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "no file 'x'", "type": "invalid_request_error"}}, "no file 'x'"),
        ({"detail": "an admin key is required"}, "an admin key is required"),
        (
            {"detail": [{"loc": ["body", "prompt"], "msg": "Field required"}]},
            "prompt: Field required",
        ),
        (None, "Internal Server Error"),
    ],
)
def test_api_errors_read_as_one_line(body: object, expected: str) -> None:
    """OpenAI-shaped errors, FastAPI details (string or list) and plain text all give
    ``HTTP <status>: <message>``."""
    assert describe_error(500, body, "Internal Server Error") == f"HTTP 500: {expected}"


class FakeAdapter(requests.adapters.BaseAdapter):
    """Answers requests from a list of (status, JSON body), recording them."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        super().__init__()
        self.answers = answers
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:  # type: ignore[override]
        self.sent.append(request)
        status, body = self.answers.pop(0)
        resp = requests.Response()
        resp.status_code = status
        resp._content = json.dumps(body).encode()
        resp.request = request
        return resp

    def close(self) -> None:
        pass


def fake_client(answers: list[tuple[int, Any]]) -> tuple[GenqClient, FakeAdapter]:
    session = requests.Session()
    adapter = FakeAdapter(answers)
    session.mount("http://", adapter)
    return GenqClient("http://genq.test", SECRET, session=session), adapter


def test_a_create_is_retried_after_a_503_with_the_same_idempotency_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 503 on create is retried, and both tries carry the run's Idempotency-Key."""
    monkeypatch.setattr(client_module, "RETRY_WAITS_S", (0.0, 0.0))
    client, adapter = fake_client(
        [(503, {"error": {"message": "down"}}), (200, batch_of().model_dump())]
    )
    batch = client.create_batch("file-1", COMPLETIONS, "key-1", None)
    assert batch.id == "batch_1"
    assert [r.headers["Idempotency-Key"] for r in adapter.sent] == ["key-1", "key-1"]
    assert all(r.headers["Authorization"] == f"Bearer {SECRET}" for r in adapter.sent)


def test_errors_and_repr_never_show_the_key() -> None:
    """A 401's message and the client's repr name the problem and the URL, not the key."""
    client, _ = fake_client([(401, {"detail": "missing or unknown API key"})])
    with pytest.raises(ApiError) as caught:
        client.circuits()
    assert caught.value.message == "HTTP 401: missing or unknown API key"
    assert SECRET not in repr(client) and SECRET not in str(caught.value)
    assert not caught.value.transient


# Settings -----------------------------------------------------------------------------


def test_settings_read_the_environment_and_options_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """GENQ_API_URL and GENQ_API_KEY are read; given options replace them; the key is
    secret in repr."""
    monkeypatch.setenv("GENQ_API_URL", "http://env.test:9000/")
    monkeypatch.setenv("GENQ_API_KEY", SECRET)
    from_env = CliSettings.load()
    assert from_env.api_url == "http://env.test:9000"
    assert from_env.api_key is not None and from_env.api_key.get_secret_value() == SECRET
    assert SECRET not in repr(from_env)
    assert CliSettings.load(api_url="https://other.test").api_url == "https://other.test"


def test_settings_refuse_a_url_that_is_not_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL without http(s) is refused with the variable's name."""
    monkeypatch.delenv("GENQ_API_URL", raising=False)
    with pytest.raises(ValidationError, match=r"GENQ_API_URL, --api-url\) must be http"):
        CliSettings.load(api_url="localhost:8000")


def test_a_command_without_a_key_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GENQ_API_KEY and no --api-key: exit 2 with one line saying how to give one."""
    monkeypatch.delenv("GENQ_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["circuits"])
    assert result.exit_code == 2
    assert "no API key: set GENQ_API_KEY or pass --api-key" in result.output


def test_an_unreachable_api_is_one_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listening: ``genq: cannot reach …`` and exit 1, the key nowhere."""
    monkeypatch.setattr(client_module, "RETRY_WAITS_S", ())
    args = ["--api-url", "http://127.0.0.1:9", "--api-key", SECRET, "batch", "status", "b"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "genq: cannot reach http://127.0.0.1:9 (ConnectionError)" in result.output
    assert SECRET not in result.output
    assert "Traceback" not in result.output


# The circuit watch --------------------------------------------------------------------


def test_a_state_change_is_an_event_and_puts_the_circuit_in_focus() -> None:
    """closed → open between two polls is reported once, with the next probe, and the
    bar then shows that circuit even though another one is forced open."""
    watch = CircuitWatch()
    assert watch.observe([circuit("closed"), circuit("forced_open", name="other")]) == []
    opened = circuit("open", retry_after=2.5, last_failure="UpstreamUnavailable: 503")
    events = watch.observe([opened, circuit("forced_open", name="other")])
    assert events == ["circuit hf~sim~m: closed → open · probe in 2.5 s (UpstreamUnavailable)"]
    assert watch.focus == {"hf~sim~m"}
    shown = watch.shown()
    assert shown is not None and shown.name == "hf~sim~m"


def test_without_focus_the_worst_circuit_is_shown() -> None:
    """Before the run touches a circuit, the bar shows the worst state of all."""
    watch = CircuitWatch()
    watch.observe([circuit("closed", name="a"), circuit("half-open", name="b")])
    shown = watch.shown()
    assert shown is not None and shown.name == "b"
    assert worst([]) is None


def test_transitions_count_what_happened_between_polls() -> None:
    """A circuit first seen mid-run counts all its transitions; a known one, the increase."""
    watch = CircuitWatch()
    watch.observe([circuit("closed", name="old", transitions={"opened": 3, "closed": 3})])
    watch.observe(
        [
            circuit("closed", name="old", transitions={"opened": 4, "half_open": 1, "closed": 4}),
            circuit("open", name="new", transitions={"opened": 1}),
        ]
    )
    assert watch.transitions() == {
        "new": {"opened": 1},
        "old": {"opened": 1, "half_open": 1, "closed": 1},
    }


def test_output_lines_name_the_circuits_that_refused() -> None:
    """``genq.circuit`` of degraded answers names the circuit; error lines name none."""
    lines = [
        output_line("a"),
        output_line("b", "cache", "hf~x~m"),
        '{"custom_id": "c", "response": null, "error": {"code": "service_unavailable"}}',
    ]
    assert circuits_named(lines) == {"hf~x~m"}
    watch = CircuitWatch()
    watch.named(circuits_named(lines))
    assert watch.focus == {"hf~x~m"}


@pytest.mark.parametrize(
    ("given", "text"),
    [
        (circuit("open", retry_after=1.25), "open · probe in 1.2 s"),
        (circuit("open"), "open · probe due"),
        (circuit("half-open", probe_in_flight=True), "half-open · probe in flight"),
        (circuit("forced_closed"), "forced_closed"),
    ],
)
def test_state_texts(given: Circuit, text: str) -> None:
    """The bar's circuit text says when the next probe comes."""
    assert state_text(given) == text


# Rendering and result files -----------------------------------------------------------


def test_the_status_line_shows_sources_failures_and_the_circuit() -> None:
    """Under the bar: upstream, cache, excerpt, failed, and the circuit's state."""
    text = status_line(batch_of(), circuit("open", retry_after=3)).plain
    expected = "upstream 2  cache 1  excerpt 1  failed 1  │  circuit open · probe in 3.0 s"
    assert " ".join(text.split()) == " ".join(expected.split())


def test_the_summary_lists_sources_failures_and_the_circuit_story() -> None:
    """The final table: each source, failed, cancelled, total, time and the circuit."""
    done = batch_of(status="completed", request_counts={"total": 5, "completed": 4, "failed": 1})
    text = rendered(
        summary_table(done, 3.25, {"hf~x": {"opened": 1, "closed": 1}}, {"hf~x": "closed"})
    )
    assert "completed: 5 requests in 3.2 s" in text
    for row in ("answered from cache (degraded)", "answered from excerpt (degraded)", "failed"):
        assert row in text
    assert "opened 1 · closed 1 · now closed" in text


def test_validation_errors_are_listed_with_their_lines() -> None:
    """A failed batch's errors read ``line N: code: message (param …)``."""
    failed = batch_of(
        status="failed",
        errors={"data": [{"line": 3, "code": "invalid_url", "message": "bad", "param": "url"}]},
    )
    assert line_errors(failed) == ["line 3: invalid_url: bad (param url)"]


def test_results_follow_the_input_order() -> None:
    """Output and error lines are written in the order of their custom_id in the input."""
    lines = [output_line("line-3"), output_line("zzz"), output_line("line-1")]
    ordered = [json.loads(line)["custom_id"] for line in order_lines(lines, ["line-1", "line-3"])]
    assert ordered == ["line-1", "line-3", "zzz"]


# Ctrl-C during ``batch run`` ----------------------------------------------------------


class FakeApi:
    """The client calls ``run_batch`` makes; the second poll is interrupted by Ctrl-C."""

    def __init__(self) -> None:
        self.cancelled = False
        self.polls = 0

    def upload(self, name: str, data: bytes, idempotency_key: str) -> str:
        return "file-in"

    def create_batch(self, *_: Any) -> Batch:
        return batch_of(request_counts={"total": 10, "completed": 0, "failed": 0})

    def batch(self, batch_id: str) -> Batch:
        self.polls += 1
        if self.cancelled:
            counts = {"total": 10, "completed": 3, "failed": 0}
            return batch_of(status="cancelled", request_counts=counts, genq={"cancelled": 7})
        if self.polls == 1:
            raise KeyboardInterrupt
        return batch_of()

    def cancel_batch(self, batch_id: str) -> Batch:
        self.cancelled = True
        return batch_of(status="cancelling")

    def circuits(self) -> list[Circuit]:
        return []

    def file_lines(self, file_id: str) -> list[str]:
        return [output_line("line-1"), output_line("line-2")] if file_id == "file-out" else []


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    return path


def run_interrupted(input_file: Path, choice: bool | None) -> tuple[int, FakeApi, str]:
    api = FakeApi()
    console = Console(width=200, record=True, color_system=None)
    options = RunOptions(input_file, default_output(input_file), interval_s=0.0)
    options = RunOptions(**{**vars(options), "cancel_on_interrupt": choice})
    run = run_batch(api, options, console)  # type: ignore[arg-type]
    return run.code, api, console.export_text()


def test_ctrl_c_with_cancel_cancels_and_still_writes_partial_results(input_file: Path) -> None:
    """--cancel-on-interrupt: the batch is cancelled, followed to ``cancelled``, its
    partial answers written, and the run exits 1."""
    code, api, text = run_interrupted(input_file, True)
    assert code == 1 and api.cancelled
    assert "cancelling batch_1" in text
    assert len(default_output(input_file).read_text().splitlines()) == 2
    assert "cancelled" in text


def test_ctrl_c_without_cancel_detaches_and_says_how_to_resume(input_file: Path) -> None:
    """--no-cancel-on-interrupt: nothing is cancelled, exit 130, and the way back is
    printed (``genq batch status ID``)."""
    code, api, text = run_interrupted(input_file, False)
    assert code == EXIT_DETACHED and not api.cancelled
    assert "genq batch status batch_1" in text
    assert not default_output(input_file).exists()


@pytest.mark.parametrize("answer", [True, False])
def test_ctrl_c_asks_when_not_told(
    input_file: Path, monkeypatch: pytest.MonkeyPatch, answer: bool
) -> None:
    """Without the option the user is asked "cancel the batch?"; the answer decides."""
    asked: list[str] = []

    def confirm(text: str, default: bool = False) -> bool:
        asked.append(text)
        return answer

    monkeypatch.setattr(typer, "confirm", confirm)
    code, api, _ = run_interrupted(input_file, None)
    assert asked == ["cancel the batch?"]
    assert api.cancelled is answer
    assert code == (1 if answer else EXIT_DETACHED)


def test_a_refused_question_detaches(input_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C again at the question (or no terminal) leaves the batch running."""

    def abort(*_: Any, **__: Any) -> bool:
        raise typer.Abort()

    monkeypatch.setattr(typer, "confirm", abort)
    code, api, _ = run_interrupted(input_file, None)
    assert code == EXIT_DETACHED and not api.cancelled
    assert batch_module.EXIT_DETACHED == 130


# The command line ---------------------------------------------------------------------


def walk_commands() -> dict[tuple[str, ...], Any]:
    """Every command and group of ``genq`` by the words that name it (the root: ())."""
    found: dict[tuple[str, ...], Any] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found[path] = command
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def command_paths() -> list[list[str]]:
    return [list(path) for path in walk_commands()]


def leaf_commands() -> dict[str, Any]:
    """The commands that are no group, by name (``batch run``)."""
    return {" ".join(p): c for p, c in walk_commands().items() if not hasattr(c, "commands")}


def test_version_prints_the_installed_version() -> None:
    """``genq --version`` prints the package's version and exits 0, with no key needed."""
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"genq {version('genq')}\n"


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "genq")
def test_help_fits_80_columns_and_shows_flags_bare(path: list[str]) -> None:
    """Each command's --help at COLUMNS=80: no line past 80, nothing cut short with an
    ellipsis, and no type placeholder such as <bool> beside a flag."""
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    cut = [line for line in lines[1:] if line.endswith(("...", "…"))]  # not the usage line
    assert cut == [], result.stdout
    assert "<bool>" not in result.stdout


def test_every_command_that_prints_an_object_takes_json() -> None:
    """--json on every command but ``batch results`` (its output is the result lines)."""
    without = {
        name
        for name, command in leaf_commands().items()
        if not any("--json" in param.opts for param in command.params)
    }
    assert without == {"batch results"}


def test_json_prints_the_object_as_the_api_sent_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """``genq circuits --json`` prints the API's list whole, fields the CLI does not
    model included; ``circuits open NAME --json`` the circuit it answered."""
    listed = [{"name": "hf~sim~m", "state": "open", "failure_count": 5, "new_field": [1]}]
    opened = {"name": "hf~sim~m", "state": "forced_open", "forced": True}
    client, _ = fake_client([(200, listed), (200, opened)])
    monkeypatch.setattr(commands_module, "client_for", lambda ctx: client)
    runner = CliRunner()
    result = runner.invoke(app, ["circuits", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == listed
    result = runner.invoke(app, ["circuits", "open", "hf~sim~m", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == opened

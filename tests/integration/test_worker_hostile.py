"""Hostile and broken clients against a live worker: fuzzed frames, slow-loris, 100 at once.

Every fuzzed line gets exactly one well-formed answer (an error unless the line is a valid
request), except a line that parses as a JSON object without ``command``: by PROTOCOL.md that
is an answer, and answers are never answered (two peers doing so would loop); it is dropped.
A line over the frame limit gets ``frame_too_large`` and a close. Meanwhile a well-behaved
client on another connection keeps getting pongs, and the worker's memory stays bounded.
The figures each test measures are printed (``-s``) and recorded as junit properties;
docs/reliability.md quotes the last run.
"""

from __future__ import annotations

import collections
import json
import random
import resource
import select
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import support
from support import Frame, WireClient, WorkerProcess, archive_task

StartWorker = Callable[..., AbstractContextManager[WorkerProcess]]
Record = Callable[[str, object], None]

FRAME_LIMIT = 65536
"""Small enough that oversized lines are cheap to send, large enough for every other frame."""
MAX_RSS_GROWTH_KIB = 50 * 1024
MAX_PING_LATENCY = 2.0  # "keeps getting pongs": generous, so a loaded CI host cannot flake it
"""Seconds; generous on purpose (2 cores shared with the fuzzers): a stall, not a benchmark."""
SEED = 20240505
FUZZ_THREADS = 4
ROUNDS_PER_THREAD = 8
"""Each round is one connection: batches of fuzzed lines, then one way to end it."""
BATCHES_PER_ROUND = 40
BATCH = 25

WIRE_CODES = {
    "invalid_json",
    "not_an_object",
    "unknown_command",
    "invalid_params",
    "protocol_error",
    "duplicate_task",
    "unknown_task",
    "frame_too_large",
}


@pytest.fixture
def record(record_property: Callable[[str, object], None]) -> Record:
    def record_figure(name: str, value: object) -> None:
        record_property(name, value)
        print(f"FIGURE {name} = {value}")

    return record_figure


@pytest.fixture(scope="module")
def fuzz_worker() -> Iterator[WorkerProcess]:
    """One worker for the fuzz tests: they share it, so damage would accumulate."""
    directory = support.short_socket_dir()
    try:
        with support.start_worker(directory, "--frame-limit", str(FRAME_LIMIT)) as worker:
            yield worker
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def memory_kib(worker: WorkerProcess) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of the worker process, in KiB."""
    status = Path(f"/proc/{worker.process.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


# --- a well-behaved client, pinging throughout ---------------------------------------------


@dataclass
class Pinger:
    """Pings the worker on its own connection every ``interval`` s, on a thread."""

    worker: WorkerProcess
    interval: float = 0.02
    pongs: int = 0
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.worker.connect() as client:
            number = 0
            while not self._stop.is_set():
                number += 1
                started = time.monotonic()
                try:
                    answer = client.request({"command": "ping", "requestId": f"calm-{number}"})
                except (OSError, EOFError, TimeoutError, ValueError) as exc:
                    self.failures.append(f"ping {number}: {exc!r}")
                    return
                self.latencies.append(time.monotonic() - started)
                if (answer.get("message"), answer.get("requestId")) == ("pong", f"calm-{number}"):
                    self.pongs += 1
                else:
                    self.failures.append(f"ping {number}: {answer!r}")
                self._stop.wait(self.interval)

    def check(self, record: Record, prefix: str) -> None:
        assert self.failures == [], self.failures
        assert self.pongs > 0 and self.pongs == len(self.latencies)
        worst = max(self.latencies)
        record(f"{prefix}_calm_pongs", self.pongs)
        record(f"{prefix}_calm_max_ping_latency_ms", round(worst * 1000, 1))
        assert worst < MAX_PING_LATENCY, f"a pong took {worst:.3f} s"


@pytest.fixture
def pinger(fuzz_worker: WorkerProcess) -> Iterator[Pinger]:
    calm = Pinger(fuzz_worker)
    thread = threading.Thread(target=calm.run, name="calm-client", daemon=True)
    thread.start()
    yield calm
    calm._stop.set()
    thread.join(support.RECV_TIMEOUT * 2)
    assert not thread.is_alive(), "the calm client hung"


# --- sending fuzzed lines and checking what comes back ------------------------------------


def is_unsolicited_answer(line: bytes) -> bool:
    """A line that parses (as the worker parses) as an object without ``command``."""
    try:
        value = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(value, dict) and "command" not in value


def expected_codes(line: bytes) -> set[str]:
    """The answers a line may get: error codes, or a success status."""
    try:
        value = msgspec.json.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return {"invalid_json"}
    if not isinstance(value, dict):
        return {"not_an_object"}
    return {"invalid_params", "unknown_command", "duplicate_task", "unknown_task"} | {
        "success",
        "queued",
    }


def check_answer(line: bytes, answer: Frame, codes: collections.Counter[str]) -> None:
    status = answer.get("status")
    assert status in ("success", "queued", "error"), (line[:200], answer)
    code = answer["code"] if status == "error" else status
    assert isinstance(code, str)
    if status == "error":
        assert code in WIRE_CODES, (line[:200], answer)
        assert isinstance(answer.get("error"), str) and answer["error"], answer
    assert code in expected_codes(line), (line[:200], answer)
    codes[code] += 1


def refuse_execute(client: WireClient, request: Frame) -> None:
    client.send(
        {
            "requestId": request["requestId"],
            "status": "error",
            "error": "the fuzzing daemon has no collections",
            "code": "unknown_collection",
        }
    )


def exchange(client: WireClient, lines: list[bytes], sync: str) -> list[Frame]:
    """Send ``lines`` in one write, then a ping ``sync``; the answers before its pong.

    Requests the worker makes meanwhile (``execute`` of a task a fuzzed line happened to
    queue) are refused, so such tasks end quickly, whatever they ask for.
    """
    client.send_raw(b"".join(line + b"\n" for line in lines))
    client.send({"command": "ping", "requestId": sync})
    answers: list[Frame] = []
    while True:
        frame = client.recv()
        if frame.get("command") == "execute":
            refuse_execute(client, frame)
        elif "command" in frame:
            continue  # progress, complete
        elif frame.get("requestId") == sync and frame.get("message") == "pong":
            return answers
        else:
            answers.append(frame)


def send_and_check(
    client: WireClient, lines: list[bytes], sync: str, codes: collections.Counter[str]
) -> None:
    answered = [line for line in lines if not is_unsolicited_answer(line)]
    codes["dropped_as_answer"] += len(lines) - len(answered)
    answers = exchange(client, lines, sync)
    assert len(answers) == len(answered), (len(answers), len(answered), answers[-3:])
    for line, answer in zip(answered, answers, strict=True):
        check_answer(line, answer, codes)


def close_is_seen(client: WireClient) -> bool:
    """Drain what the worker still sends; True once it has closed the connection."""
    try:
        while True:
            line = client.recv_line()
            frame = json.loads(line)
            assert isinstance(frame, dict)
            if frame.get("command") == "execute":
                refuse_execute(client, frame)
    except EOFError:
        return True
    except (TimeoutError, BrokenPipeError, ConnectionResetError):
        return False


def check_oversized(worker: WorkerProcess, line: bytes) -> None:
    """A line over the limit: ``frame_too_large``, then the worker closes."""
    with worker.connect() as client:
        client.send_raw(line)
        answer = client.recv_until(lambda f: "command" not in f)
        assert (answer["status"], answer["code"]) == ("error", "frame_too_large"), answer
        assert close_is_seen(client)


def check_tail_then_eof(worker: WorkerProcess, tail: bytes) -> str:
    """Bytes without a newline, then EOF: an error answer (if any), then the worker closes."""
    with worker.connect() as client:
        client.send_raw(tail)
        client.sock.shutdown(socket.SHUT_WR)
        frames: list[Frame] = []
        try:
            while True:
                frames.append(json.loads(client.recv_line()))
        except EOFError:
            pass
        answers = [f for f in frames if "command" not in f]
        if not tail.strip():
            assert answers == [], answers
            return "closed"
        assert len(answers) == 1, (tail[:200], frames)
        assert answers[0]["status"] == "error" and answers[0]["code"] in WIRE_CODES, answers
        return str(answers[0]["code"])


# --- the seeded generator of mutated frames -------------------------------------------------

TEMPLATES: list[Frame] = [
    {"command": "ping"},
    {"command": "ping", "requestId": "r-1"},
    archive_task("task-fuzz"),
    {"command": "status"},
    {"command": "cancel", "taskId": "task-fuzz"},
]
ODD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    -(2**64),
    1.5,
    1e308,
    "",
    "x" * 300,
    "ünï\u2028cödé",
    "\x00",
    [],
    [1, [2, [3]]],
    {},
    {"a": {"b": None}},
]
RAW_NUMBERS = [b"1e999", b"-1e999", b"1" * 4400, b"-" + b"9" * 5000, b"0.1e-99999", b"1E400", b"-0"]


class Mutator:
    """Deterministic (seeded) mutations of valid frames into broken ones."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self) -> object:
        rng = self.rng
        if rng.random() < 0.2:
            return {"k": self.value()} if rng.random() < 0.5 else [self.value()]
        return rng.choice(ODD_VALUES)

    def template(self) -> Frame:
        frame = dict(self.rng.choice(TEMPLATES))
        if frame.get("command") == "archive":
            frame["taskId"] = f"task-{self.rng.randrange(10)}"
        return frame

    def line(self) -> bytes:
        kind = self.rng.randrange(10)
        line = getattr(self, f"_kind_{kind}")()
        assert isinstance(line, bytes)
        return line.replace(b"\n", b" ")

    def _kind_0(self) -> bytes:  # random bytes
        return self.rng.randbytes(self.rng.randrange(0, 300))

    def _kind_1(self) -> bytes:  # truncated JSON
        data = json.dumps(self.template()).encode()
        return data[: self.rng.randrange(0, len(data))]

    def _kind_2(self) -> bytes:  # flipped, inserted and deleted bytes
        data = bytearray(json.dumps(self.template()).encode())
        for _ in range(self.rng.randrange(1, 6)):
            at = self.rng.randrange(len(data))
            match self.rng.randrange(3):
                case 0:
                    data[at] ^= 1 << self.rng.randrange(8)
                case 1:
                    data.insert(at, self.rng.randrange(256))
                case _:
                    del data[at]
        return bytes(data)

    def _kind_3(self) -> bytes:  # deep nesting
        depth = self.rng.choice([100, 1000, 5000])  # under FRAME_LIMIT
        opener = self.rng.choice([b"[", b'{"a":', b'{"command":'])
        closer = {b"[": b"]", b'{"a":': b"}", b'{"command":': b"}"}[opener]
        return opener * depth + b"1" + closer * self.rng.choice([0, depth])

    def _kind_4(self) -> bytes:  # huge and out-of-range numbers in a field
        frame = self.template()
        key = self.rng.choice([*frame, "maxRows", "batchSize", "requestId"])
        frame[key] = "@NUMBER@"
        data = json.dumps(frame).encode()
        return data.replace(b'"@NUMBER@"', self.rng.choice(RAW_NUMBERS))

    def _kind_5(self) -> bytes:  # a wrong type in every field
        frame = self.template()
        return json.dumps({key: self.value() for key in frame}).encode()

    def _kind_6(self) -> bytes:  # a wrong type in one field
        frame = self.template()
        frame[self.rng.choice(list(frame))] = self.value()
        return json.dumps(frame).encode()

    def _kind_7(self) -> bytes:  # valid message with extra fields
        frame = self.template()
        for number in range(self.rng.randrange(1, 20)):
            frame[f"extra{number}"] = self.value()
        return json.dumps(frame).encode()

    def _kind_8(self) -> bytes:  # JSON that is not an object, or odd commands
        if self.rng.random() < 0.5:
            return json.dumps(self.value()).encode()
        command = self.rng.choice(["PING", "ping\x00", "", "execute", "complete", "x" * 5000])
        return json.dumps({"command": command}).encode()

    def _kind_9(self) -> bytes:  # invalid UTF-8 and lone surrogates inside strings
        data = json.dumps(self.template()).encode()
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\\ud800", b"\xed\xa0\x80", b"\\u0000"])
        at = data.rfind(b'"', 0, len(data) - 1)
        return data[:at] + bad + data[at:]


def fuzz_rounds(worker: WorkerProcess, seed: int) -> tuple[int, collections.Counter[str]]:
    """One fuzzing thread: rounds of connections, each ended in one of three ways.

    Returns the number of frames sent and the answers they got, by code.
    """
    mutator = Mutator(seed)
    codes: collections.Counter[str] = collections.Counter()
    frames = 0
    for round_number in range(ROUNDS_PER_THREAD):
        client = worker.connect()
        try:
            for batch_number in range(BATCHES_PER_ROUND):
                lines = [mutator.line() for _ in range(BATCH)]
                send_and_check(client, lines, f"sync-{seed}-{round_number}-{batch_number}", codes)
                frames += len(lines)
        finally:
            client.close()
        ending = round_number % 3
        if ending == 0:
            oversized = mutator.rng.randbytes(FRAME_LIMIT + 100).replace(b"\n", b"x")
            check_oversized(worker, oversized + b"\n")
            codes["frame_too_large"] += 1
        elif ending == 1:
            codes["tail_" + check_tail_then_eof(worker, mutator.line()[:2000])] += 1
        frames += ending != 2
    return frames, codes


def test_thousands_of_fuzzed_frames_get_error_answers_and_the_worker_stays_healthy(
    fuzz_worker: WorkerProcess, pinger: Pinger, record: Record
) -> None:
    before = memory_kib(fuzz_worker)
    started = time.monotonic()
    results: list[tuple[int, collections.Counter[str]]] = []
    errors: list[BaseException] = []

    def fuzz(number: int) -> None:
        try:
            results.append(fuzz_rounds(fuzz_worker, SEED + number))
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=fuzz, args=(n,)) for n in range(FUZZ_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a fuzzing client hung"
    if errors:
        raise errors[0]

    frames = sum(count for count, _ in results)
    codes = sum((counts for _, counts in results), collections.Counter[str]())
    after = memory_kib(fuzz_worker)
    assert fuzz_worker.process.poll() is None, fuzz_worker.stderr()[-3000:]
    with fuzz_worker.connect() as fresh:
        assert fresh.ping()["message"] == "pong"
    record("fuzz_seeded_frames", frames)
    record("fuzz_seeded_seconds", round(time.monotonic() - started, 2))
    record("fuzz_seeded_answers_by_code", dict(sorted(codes.items())))
    record("fuzz_worker_rss_kib_before", before["VmRSS"])
    record("fuzz_worker_rss_kib_after", after["VmRSS"])
    record("fuzz_worker_rss_growth_kib", after["VmRSS"] - before["VmRSS"])
    record("fuzz_worker_peak_rss_kib", after["VmHWM"])
    assert frames >= FUZZ_THREADS * ROUNDS_PER_THREAD * BATCHES_PER_ROUND * BATCH
    assert codes["invalid_json"] > 0 and codes["invalid_params"] > 0
    assert after["VmRSS"] - before["VmRSS"] < MAX_RSS_GROWTH_KIB
    pinger.check(record, "fuzz_seeded")


# --- hypothesis: generated messages, lines and unterminated tails ---------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
archive_fields = ["taskId", "collection", "sourceHandle", "destHandle", "maxRows", "batchSize"]


@st.composite
def mistyped_messages(draw: st.DrawFn) -> bytes:
    """A known command whose fields hold any JSON value, plus maybe extra fields."""
    command = draw(st.sampled_from(["ping", "archive", "status", "cancel", "execute"]))
    names = {"archive": archive_fields, "cancel": ["taskId"]}.get(command, ["requestId"])
    frame: Frame = {"command": command}
    for name in draw(st.lists(st.sampled_from(names), unique=True)):
        frame[name] = draw(json_values)
    frame.update(draw(st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=3)))
    return json.dumps(frame).encode()


fuzz_lines = (
    mistyped_messages()
    | st.binary(max_size=200).map(lambda data: data.replace(b"\n", b""))
    | json_values.map(lambda value: json.dumps(value).encode())
)
HYPOTHESIS_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_generated_lines_each_get_one_well_formed_answer_on_one_connection(
    fuzz_worker: WorkerProcess, pinger: Pinger, record: Record
) -> None:
    codes: collections.Counter[str] = collections.Counter()
    sent = [0]
    with fuzz_worker.connect() as client:

        @HYPOTHESIS_SETTINGS
        @given(fuzz_lines)
        def check(line: bytes) -> None:
            sent[0] += 1
            send_and_check(client, [line], f"sync-h-{sent[0]}", codes)

        check()
        assert client.ping()["message"] == "pong"
    record("fuzz_hypothesis_lines", sent[0])
    record("fuzz_hypothesis_answers_by_code", dict(sorted(codes.items())))
    assert sent[0] >= 300
    assert fuzz_worker.process.poll() is None
    pinger.check(record, "fuzz_hypothesis")


def test_unterminated_lines_then_eof_get_an_error_answer_or_a_close(
    fuzz_worker: WorkerProcess, pinger: Pinger, record: Record
) -> None:
    outcomes: collections.Counter[str] = collections.Counter()

    @settings(HYPOTHESIS_SETTINGS, max_examples=100)
    @given(fuzz_lines | st.just(b'{"command": "ping"}') | st.just(b"   "))
    def check(tail: bytes) -> None:
        outcomes[check_tail_then_eof(fuzz_worker, tail)] += 1

    check()
    record("fuzz_unterminated_tails", sum(outcomes.values()))
    record("fuzz_unterminated_outcomes", dict(sorted(outcomes.items())))
    assert outcomes["protocol_error"] > 0  # the complete ping without its newline
    assert fuzz_worker.process.poll() is None
    pinger.check(record, "fuzz_unterminated")


# --- slow and silent clients ------------------------------------------------------------------


def peer_closed(sock: socket.socket) -> bool:
    """True if the worker has closed ``sock`` (without blocking)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_silent_and_trickling_clients_are_closed_after_the_idle_timeout_without_delaying_others(
    start_worker: StartWorker, record: Record
) -> None:
    idle_timeout = 1.0
    with start_worker("--idle-timeout", str(idle_timeout)) as worker:
        busy = worker.connect()
        silent = worker.connect()
        trickle = worker.connect()
        opened = time.monotonic()
        closed_after: dict[str, float] = {}
        trickled = 0
        payload = b'{"command": "ping", "requestId": "slow"}\n'
        latencies: list[float] = []
        next_byte = opened
        while len(closed_after) < 2 and time.monotonic() - opened < 5 * idle_timeout:
            started = time.monotonic()
            assert busy.ping()["message"] == "pong"
            latencies.append(time.monotonic() - started)
            if "trickle" not in closed_after and time.monotonic() >= next_byte:
                try:
                    trickle.send_raw(payload[trickled : trickled + 1])
                    trickled += 1
                except (BrokenPipeError, ConnectionResetError):
                    closed_after["trickle"] = time.monotonic() - opened
                next_byte += 0.3
            for name, sock in (("silent", silent.sock), ("trickle", trickle.sock)):
                if name not in closed_after and peer_closed(sock):
                    closed_after[name] = time.monotonic() - opened
            time.sleep(0.05)
        # Well past the timeout, the busy client is still served: idle means silent.
        assert busy.ping()["message"] == "pong"
        for client in (busy, silent, trickle):
            client.close()
        log = worker.stderr()
    record("slowloris_closed_after_s", {k: round(v, 2) for k, v in closed_after.items()})
    record("slowloris_trickled_bytes", trickled)
    record("slowloris_busy_pings", len(latencies))
    record("slowloris_max_ping_latency_ms", round(max(latencies) * 1000, 1))
    assert set(closed_after) == {"silent", "trickle"}, closed_after
    for name, after in closed_after.items():
        assert idle_timeout * 0.9 <= after <= idle_timeout + 4.0, (name, after)
    assert 0 < trickled < len(payload)
    assert log.count("idle for") >= 2
    # Not a speed figure: a busy client must not wait for the slow ones (they take seconds).
    assert max(latencies) < 2.0


def test_hundred_clients_connected_at_once_each_get_pong(
    start_worker: StartWorker, record: Record
) -> None:
    clients_wanted = 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * clients_wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * clients_wanted), hard))
    with start_worker() as worker:
        clients = [worker.connect() for _ in range(clients_wanted)]
        try:
            for number, client in enumerate(clients):
                client.send({"command": "ping", "requestId": f"many-{number}"})
            answers = [client.recv() for client in clients]
            # All still open at once: a second round on every connection is served too.
            again = [client.ping() for client in clients]
        finally:
            for client in clients:
                client.close()
        assert worker.process.poll() is None
    served = sum(
        answer.get("message") == "pong" and answer.get("requestId") == f"many-{number}"
        for number, answer in enumerate(answers)
    )
    record("clients_held_at_once", len(clients))
    record("clients_served", served)
    assert served == clients_wanted
    assert all(answer.get("message") == "pong" for answer in again)


def test_a_client_that_never_reads_its_answers_is_dropped_without_delaying_others(
    start_worker: StartWorker, record: Record
) -> None:
    with start_worker("--write-timeout", "1") as worker:
        busy = worker.connect()
        deaf = worker.connect()
        deaf.sock.setblocking(False)
        ping = b'{"command":"ping"}\n' * 1000
        sent = 0
        started = time.monotonic()
        dropped_after: float | None = None
        latencies: list[float] = []
        while time.monotonic() - started < 10:
            try:
                sent += deaf.sock.send(ping)
            except BlockingIOError:
                pass  # the worker stopped reading us: it is blocked writing our answers
            except (BrokenPipeError, ConnectionResetError):
                dropped_after = time.monotonic() - started
                break
            before = time.monotonic()
            assert busy.ping()["message"] == "pong"
            latencies.append(time.monotonic() - before)
            time.sleep(0.01)
        busy.close()
        deaf.close()
        log = worker.stderr()
    record("deaf_client_bytes_sent", sent)
    record("deaf_client_dropped_after_s", dropped_after)
    assert dropped_after is not None, "the worker kept a client that never reads"
    assert "stopped reading" in log or "not reading" in log
    assert max(latencies) < 2.0  # served while the other client is stuck, not a speed figure

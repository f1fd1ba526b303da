"""A Redis failover behind one URL: the primary turns read-only, a replica takes over.

A managed Redis endpoint is one address in front of a primary and a replica. In a failover the
replica is promoted and the old primary becomes its replica; for a few seconds the address
still reaches the old primary, which answers every write ``READONLY``; then it reaches the new
primary. Some endpoints drop the old connections then, others (a DNS name) leave them open to
the old primary, now a replica for good.

The integration test: two private ``redis-server`` processes, B a replica of A, behind
:class:`SwitchableProxy` (a TCP proxy thread of this test), so ``REDIS_URL`` is a plain
``redis://`` URL of the proxy. Two real thread-pool workers drain a stream of jobs (one every
0.1 s, the sandbox answering in 0.2-0.4 s). Mid-run the roles swap as a managed failover does
(writes on A paused until B has caught up, so no write is lost; B ``REPLICAOF NO ONE``; A
``REPLICAOF B``): writes through the proxy answer ``READONLY`` for :data:`READ_ONLY_S`; then the
proxy points at B, and drops every open connection or (``kept``) leaves them to A.

Every worker must stay the process it was, every job be final once, and every job be final
within :data:`FINAL_AFTER_SWITCH_S` of the switch. The workers run with the production lease
(43 s), so a job that had to wait for its lease to expire (its worker gone, as in the issue:
~50 s late) would miss the bound by far. The sweeper runs every second: a message kombu popped
just as A turned read-only, whose unacked record A then refused, is lost like any message and
republished by the sweeper (15 s after its job was last touched, a few seconds before the
switch), inside the bound.

The producer of the stream does what an application does with ``BrokerUnavailable``: it tries
again, with the room as idempotency key (a retry after a dropped connection may find the job
stored).

The unit tests below: READONLY, LOADING and MASTERDOWN answers (from a scripted RESP server,
parsed by redis-py) are transient, retried through the outage, each on a new connection.
"""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import redis

import tasks
from tasks.errors import BrokerUnavailable
from tasks.job import Job, Status
from tasks.sandbox.server import SandboxServer
from tasks.store.connections import TRANSIENT_ERRORS, redis_client, through_outage
from tests.conftest import RedisServer, WorkerProcess, reset_process, wait_for
from tests.integration.soak import CLOCK_SLACK_S, describe, down, epoch, poll_jobs, starts

#: loopback ports this test may use (its proxy and its two Redis servers)
PORTS = range(6460, 6480)
#: how long writes through the one URL answer READONLY before it reaches the new primary
READ_ONLY_S = 4.0
#: every job final within this long after the URL reaches the new primary
FINAL_AFTER_SWITCH_S = 15.0
ENQUEUE_EVERY_S = 0.1
WORKER_ENV = {
    # the production lease (inline wait 3 + connect 5 + read 30 + 5 = 43 s)
    "RECORDER_READ_TIMEOUT": "30",
    "RECORDER_CONNECT_TIMEOUT": "5",
    "RECORDER_INLINE_WAIT_MAX": "3",
    "RECORDER_SWEEP_INTERVAL": "1",
}


def free_port_in(ports: range) -> int:
    """A free loopback port of ``ports``."""
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


class SwitchableProxy:
    """A TCP proxy on a loopback port to a Redis port that can change: one managed endpoint.

    One thread relays every connection; :meth:`switch` points new connections at another
    port and, with ``drop``, closes every open one (both sides), as an endpoint may in a
    failover.
    """

    def __init__(self, port: int, target_port: int) -> None:
        self.port = port
        self.target_port = target_port
        self.dropped = 0  # connections dropped by switch()
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._drop = threading.Event()
        self._dropped = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> SwitchableProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in list(self._peers):
            self._close(sock)
        self._selector.close()
        self._listener.close()

    def switch(self, target_port: int, *, drop: bool) -> None:
        """Point new connections at ``target_port``; with ``drop``, close every open one."""
        self.target_port = target_port
        if not drop:
            return
        self._dropped.clear()
        self._drop.set()
        if not self._dropped.wait(5):
            raise AssertionError("the proxy did not drop its connections")

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock in self._peers:
                    self._relay(sock)
            if self._drop.is_set():  # in this thread, so no relay runs on a closed socket
                self._drop.clear()
                self.dropped += len(self._peers) // 2
                for sock in list(self._peers):
                    self._close(sock)
                self._dropped.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=1)
        except OSError:
            client.close()
            return
        for sock in (client, upstream):
            sock.settimeout(5)
            self._selector.register(sock, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client

    def _relay(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
            if data:
                self._peers[sock].sendall(data)
                return
        except OSError:
            pass
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        """Close ``sock`` and its peer: a dropped connection, as the client sees it."""
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def swap_roles(primary: RedisServer, replica: RedisServer) -> float:
    """Promote ``replica`` and make ``primary`` its replica, losing no write, as a managed
    failover does; returns the seconds writes on ``primary`` were paused."""
    old = redis.Redis(port=primary.port)
    new = redis.Redis(port=replica.port)
    paused = time.monotonic()
    old.client_pause(5000, all=False)  # writes only
    offset = old.info("replication")["master_repl_offset"]
    wait_for(
        lambda: new.info("replication")["slave_repl_offset"] >= offset,
        timeout_s=4,
        interval_s=0.01,
        what="the replica catching up",
    )
    new.replicaof("NO", "ONE")
    old.replicaof("127.0.0.1", replica.port)
    old.client_unpause()
    old.close()
    new.close()
    return time.monotonic() - paused


class Stream:
    """Enqueues one job every ``every_s`` in a thread; a refused enqueue is tried again."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.ids: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="failover-stream", daemon=True)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            room = f"failover-{i}"
            try:
                self.ids.append(tasks.enqueue_recording(room, idempotency_key=room).id)
            except BrokerUnavailable:
                self.refused += 1
                self._stop.wait(0.2)
                continue
            i += 1
            self._stop.wait(self.every_s)


@pytest.fixture
def failover_pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """Redis A (primary) and B (its replica) on ports of :data:`PORTS`, AOF on."""
    servers: list[RedisServer] = []
    try:
        for name in ("a", "b"):
            workdir = tmp_path / f"redis-{name}"
            workdir.mkdir()
            server = RedisServer(workdir)
            server.port = free_port_in(PORTS)
            servers.append(server.start())
        primary, replica = servers
        client = redis.Redis(port=replica.port)
        client.replicaof("127.0.0.1", primary.port)
        wait_for(
            lambda: client.info("replication")["master_link_status"] == "up",
            timeout_s=10,
            what="the replica's link",
        )
        client.close()
        yield primary, replica
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


@pytest.fixture
def endpoint(
    failover_pair: tuple[RedisServer, RedisServer],
    recorder_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SwitchableProxy]:
    """The one URL in front of the pair, reaching A; this process a producer of it. Ask for
    it before ``start_worker``, so the workers stop before the proxy does."""
    primary, _ = failover_pair
    with SwitchableProxy(free_port_in(PORTS), primary.port) as proxy:
        monkeypatch.setenv("REDIS_URL", proxy.url)
        reset_process()
        yield proxy
        reset_process()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("drop", [True, False], ids=["old-connections-dropped", "kept"])
def test_a_failover_behind_one_url_keeps_every_worker_up_and_delays_jobs_only_by_itself(
    drop: bool,
    failover_pair: tuple[RedisServer, RedisServer],
    endpoint: SwitchableProxy,
    start_worker: Callable[..., WorkerProcess],
    sandbox: SandboxServer,
) -> None:
    # Given two workers draining a stream of jobs through the one URL, which reaches A
    primary, replica = failover_pair
    sandbox.faults.latency_s = 0.2
    sandbox.faults.latency_jitter_s = 0.2
    workers = [start_worker(REDIS_URL=endpoint.url, **WORKER_ENV) for _ in range(2)]
    pids = [w.pid for w in workers]
    stream = Stream(ENQUEUE_EVERY_S).start()
    try:
        wait_for(lambda: len(starts(sandbox)) >= 20, timeout_s=30, what="20 rooms started")

        # When A and B swap roles while the URL still reaches A (writes answer READONLY) ...
        paused_s = swap_roles(primary, replica)
        read_only_at = time.time()
        time.sleep(READ_ONLY_S)
        # ... and then the URL reaches B, its old connections dropped or left to A
        endpoint.switch(replica.port, drop=drop)
        switched_at = time.time()
        time.sleep(2)
    finally:
        stream.stop()

    # Then every job is final within the bound after the switch, each room started once,
    # and both workers are the processes they were, never down
    records: dict[str, Job | None] = dict.fromkeys(stream.ids)
    deadline = time.monotonic() + FINAL_AFTER_SWITCH_S + 10
    while time.monotonic() < deadline:
        poll_jobs(records)
        if all(j is not None and j.finished for j in records.values()):
            break
        time.sleep(0.2)
    poll_jobs(records)
    jobs = [j for j in records.values() if j is not None]
    stuck = [j for j in jobs if not j.finished]
    finished_at = {j.room_id: epoch(j.finished_at) for j in jobs if j.finished_at}
    last = max(finished_at.values(), default=switched_at)
    caught = [  # jobs not final when A turned read-only, enqueued before the switch
        j
        for j in jobs
        if epoch(j.created_at) < switched_at and finished_at.get(j.room_id, last) > read_only_at
    ]
    caught_last = max((finished_at.get(j.room_id, last) for j in caught), default=switched_at)
    late = [r for r, t in finished_at.items() if t > switched_at + FINAL_AFTER_SWITCH_S]
    per_room = starts(sandbox)
    twice = sorted(room for room, n in per_room.items() if n > 1)
    after = [
        c
        for c in sandbox.calls()
        if c["room_id"] in finished_at and c["t"] > finished_at[c["room_id"]] + CLOCK_SLACK_S
    ]
    dead = [why for why in map(down, workers) if why]
    logs = "".join(w.log() for w in workers)
    print(
        f"drop={drop} jobs={len(stream.ids)} refused_enqueues={stream.refused} "
        f"paused={paused_s:.2f}s read_only={switched_at - read_only_at:.1f}s "
        f"proxy_dropped={endpoint.dropped} consumer_restarts={logs.count('broker lost')} "
        f"swept={logs.count('stranded job')} final={len(jobs) - len(stuck)} "
        f"stuck={len(stuck)} caught={len(caught)} "
        f"last_caught_final_after_switch={caught_last - switched_at:.1f}s "
        f"last_final_after_switch={last - switched_at:.1f}s "
        f"last_final_after_read_only={last - read_only_at:.1f}s late={len(late)} "
        f"started_twice={len(twice)} calls_after_finish={len(after)} dead_workers={dead}"
    )
    assert not dead, f"worker processes down: {dead}"
    assert [w.pid for w in workers] == pids and all(w.proc.poll() is None for w in workers)
    assert len(jobs) == len(stream.ids), f"{len(stream.ids) - len(jobs)} job records missing"
    assert not stuck, f"{len(stuck)} jobs not final: " + ", ".join(map(describe, stuck[:5]))
    assert {j.status for j in jobs} == {Status.SUCCEEDED}, [describe(j) for j in jobs][:5]
    assert caught, "no job was caught in the failover"
    assert sorted(per_room) == sorted(j.room_id for j in jobs), "a room started without a job"
    assert not twice, f"rooms started more than once: {twice[:10]}"
    assert not after, f"API calls after their job's finished_at: {after[:5]}"
    assert not late, (
        f"{len(late)} jobs final more than {FINAL_AFTER_SWITCH_S:.0f}s after the switch "
        f"(the last {last - switched_at:.1f}s after it)"
    )


#: answers to a redis-py connection's handshake (it speaks RESP3 by default)
HANDSHAKE: Mapping[bytes, bytes] = {
    b"HELLO": b"%1\r\n$5\r\nproto\r\n:3\r\n",
    b"CLIENT": b"+OK\r\n",
    b"SELECT": b"+OK\r\n",
    b"PING": b"+PONG\r\n",
}


class ScriptedRedis:
    """A RESP server on a loopback port: answers the next of ``errors`` to each data command
    (then ``+OK``), and what a handshake needs to the rest; counts connections."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = [f"-{e}\r\n".encode() for e in errors]
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while line := reader.readline():
                args = []
                for _ in range(int(line[1:])):  # *N, then N of $len and the bytes
                    size = int(reader.readline()[1:])
                    args.append(reader.read(size + 2)[:-2])
                reply = HANDSHAKE.get(args[0].upper())
                if reply is None:
                    reply = self.errors.pop(0) if self.errors else b"+OK\r\n"
                conn.sendall(reply)


@pytest.mark.parametrize(
    ("answer", "error_type"),
    [
        ("READONLY You can't write against a read only replica.", redis.exceptions.ReadOnlyError),
        ("LOADING Redis is loading the dataset in memory", redis.exceptions.BusyLoadingError),
        (
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            redis.exceptions.MasterDownError,
        ),
    ],
    ids=["READONLY", "LOADING", "MASTERDOWN"],
)
def test_a_server_that_is_not_the_primary_yet_is_retried_on_a_new_connection(
    answer: str, error_type: type[Exception]
) -> None:
    # Given a server that answers the first two writes as a replica or a loading primary would
    server = ScriptedRedis([answer, answer])
    client = redis_client(f"redis://127.0.0.1:{server.port}/0")
    try:
        # Then redis-py raises a transient error, which drops the connection
        with pytest.raises(error_type) as raised:
            client.set("k", "v")
        assert isinstance(raised.value, TRANSIENT_ERRORS)
        # and a write through the outage is tried again, each time on a new connection
        assert through_outage(client.set, "k", "v") is True
        assert server.connections == 3
    finally:
        client.close()
        server.close()

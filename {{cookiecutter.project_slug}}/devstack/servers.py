"""Throwaway Postgres and Redis servers started from locally installed binaries.

Guarantees: each server binds 127.0.0.1 on a free port, keeps its data under the directory it
is given, starts only when it answers (``pg_ctl -w``, a Redis PING) and is stopped by its own
PID. Postgres refuses to run as root, so under root it runs as the ``postgres`` (or ``nobody``)
account.

Needs: PostgreSQL server binaries (``initdb``, ``pg_ctl``) and ``redis-server`` on the PATH or
in the usual package locations. When they are missing, :class:`ServerUnavailable` says what to
install.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.lifetime import die_with_parent

POSTGRES_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`, "
    "macOS: `brew install postgresql@16`) or set DATABASE_URL to a server you have"
)
REDIS_HINT = (
    "install Redis (Debian/Ubuntu: `apt-get install redis-server`, macOS: `brew install redis`) "
    "or set REDIS_URL to a server you have"
)


class ServerUnavailable(RuntimeError):
    """A server could not be started here; the message says what to install."""


@dataclass
class RunningServer:
    name: str
    url: str
    pid: int | None
    _stop: Callable[[], None] = field(repr=False)
    _restart: Callable[[], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        self._stop()

    def restart(self) -> None:
        """Stop and start again on the same data and port (fast shutdown: every client
        connection is cut), returning once it accepts connections again."""
        if self._restart is None:
            raise NotImplementedError(f"{self.name} cannot be restarted in place")
        self._restart()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, so the server shuts down cleanly; SIGKILL if it has not exited by ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _find_binary(name: str, patterns: Sequence[str]) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted((path for pattern in patterns for path in glob.glob(pattern)), reverse=True)
    return candidates[0] if candidates else None


def find_postgres_binary(name: str) -> str | None:
    return _find_binary(
        name,
        [
            f"/usr/lib/postgresql/*/bin/{name}",
            f"/opt/homebrew/opt/postgresql@*/bin/{name}",
            f"/usr/local/opt/postgresql@*/bin/{name}",
        ],
    )


def _unprivileged_account() -> tuple[list[str], int, int] | None:
    """Postgres will not start as root: under root, the command prefix and ids to run it as."""
    if os.geteuid() != 0:
        return None
    for account in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(account)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        prefix = (
            [runuser, "-u", account, "--"]
            if runuser
            else ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
        )
        return prefix, entry.pw_uid, entry.pw_gid
    raise ServerUnavailable("running as root and no unprivileged account to run Postgres as")


def _hand_over(base_dir: Path) -> tuple[Path, list[str]]:
    """Make ``base_dir`` usable by the account Postgres runs as.

    Under root, a base directory the unprivileged account cannot reach (say, inside root's
    0700 temp folder) is swapped for a fresh one in the system temp directory.
    """
    account = _unprivileged_account()
    if account is None:
        return base_dir, []
    prefix, uid, gid = account
    for path in [base_dir, *base_dir.rglob("*")]:
        os.chown(path, uid, gid)
    reachable = subprocess.run([*prefix, "test", "-w", str(base_dir)], check=False).returncode
    if reachable != 0:
        base_dir = Path(tempfile.mkdtemp(prefix="pg-throwaway-"))
        os.chown(base_dir, uid, gid)
    return base_dir, prefix


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-500:]
        raise ServerUnavailable(f"{what} failed (exit {result.returncode}): {output}")


def start_postgres(
    base_dir: Path, *, port: int | None = None, parameters: Mapping[str, str] | None = None
) -> RunningServer:
    """``parameters``: extra server settings (``-c name=value``), e.g. preloaded libraries."""
    initdb = find_postgres_binary("initdb")
    pg_ctl = find_postgres_binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise ServerUnavailable(f"PostgreSQL binaries (initdb, pg_ctl) not found: {POSTGRES_HINT}")
    port = port or free_port()
    base_dir.mkdir(parents=True, exist_ok=True)
    requested_dir = base_dir
    base_dir, prefix = _hand_over(base_dir)
    data_dir = base_dir / "data"
    socket_dir = base_dir / "run"
    log_file = base_dir / "postgres.log"
    _run([*prefix, "mkdir", "-p", str(socket_dir)], "creating the socket directory")
    if not (data_dir / "PG_VERSION").exists():
        initdb_command = [*prefix, initdb, "-D", str(data_dir), "-U", "postgres"]
        initdb_command += ["--auth=trust", "-E", "UTF8", "--no-sync"]
        _run(initdb_command, "initdb")
    # Durability is pointless for a throwaway server; turning it off makes tests faster.
    options = (
        f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    options += "".join(f" -c {name}={value}" for name, value in (parameters or {}).items())
    start_command = [*prefix, pg_ctl, "-D", str(data_dir), "-l", str(log_file), "-o", options]
    _run([*start_command, "-w", "-t", "60", "start"], f"starting Postgres (log: {log_file})")
    pid_file = data_dir / "postmaster.pid"
    pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    def stop() -> None:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
        )
        if base_dir != requested_dir:  # a stand-in directory of our own making
            shutil.rmtree(base_dir, ignore_errors=True)

    def restart() -> None:
        command = [*prefix, pg_ctl, "-D", str(data_dir), "-l", str(log_file), "-m", "fast"]
        _run([*command, "-w", "-t", "60", "restart"], f"restarting Postgres (log: {log_file})")

    return RunningServer(
        "postgres", f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", pid, stop, restart
    )


def start_redis(*, port: int | None = None, data_dir: Path | None = None) -> RunningServer:
    """A Redis on ``port`` (a free one if not given). With ``data_dir`` it keeps an AOF there
    (fsync every write, as a broker's Redis should run), so a restart on the same port and
    directory comes back with its queues, streams and schedule; without, it keeps nothing."""
    binary = _find_binary("redis-server", ["/usr/local/opt/redis/bin/redis-server"])
    if not binary:
        raise ServerUnavailable(f"redis-server not found: {REDIS_HINT}")
    port = port or free_port()
    persistence = ["--appendonly", "no"]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)]
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,  # dies with the launcher, even on kill -9
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"redis-server exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                break
        time.sleep(0.05)
    else:
        process.kill()
        raise ServerUnavailable("redis-server did not answer PING within 10 seconds")

    def stop() -> None:
        stop_process(process)

    return RunningServer("redis", f"redis://127.0.0.1:{port}/0", process.pid, stop)


def docker_engine_reachable() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _start_postgres_container() -> RunningServer:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver="asyncpg").start()
    return RunningServer("postgres", container.get_connection_url(), None, container.stop)


def _start_redis_container() -> RunningServer:
    from testcontainers.redis import RedisContainer

    container = RedisContainer("redis:7-alpine").start()
    host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
    return RunningServer("redis", f"redis://{host}:{port}/0", None, container.stop)


def provide_services(
    base_dir: Path,
    environ: Mapping[str, str],
    on_start: Callable[[RunningServer], None] | None = None,
) -> tuple[dict[str, str], list[RunningServer]]:
    """URLs for Postgres and Redis, starting whatever the environment does not name.

    Order: ``DATABASE_URL`` / ``REDIS_URL`` from the environment; else throwaway servers from
    local binaries; else containers when a Docker engine answers; else :class:`ServerUnavailable`
    naming what to install. Returns the URLs and the servers started (stop them when done);
    ``on_start`` hears of each one as soon as it runs (the launcher's PID file).
    """
    starters: dict[str, tuple[Callable[[], RunningServer], Callable[[], RunningServer]]] = {
        "DATABASE_URL": (lambda: start_postgres(base_dir / "postgres"), _start_postgres_container),
        "REDIS_URL": (start_redis, _start_redis_container),
    }
    urls: dict[str, str] = {}
    started: list[RunningServer] = []
    missing: list[str] = []
    try:
        for variable, (from_binaries, from_container) in starters.items():
            if environ.get(variable):
                urls[variable] = environ[variable]
                continue
            try:
                server = from_binaries()
            except ServerUnavailable as binaries_missing:
                if not docker_engine_reachable():
                    missing.append(str(binaries_missing))
                    continue
                server = from_container()
            started.append(server)
            if on_start is not None:
                on_start(server)
            urls[variable] = server.url
        if missing:
            raise ServerUnavailable("; ".join(missing))
    except BaseException:
        for server in started:
            server.stop()
        raise
    return urls, started

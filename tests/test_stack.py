"""The production-shaped stack (``make stack``) on real engines, and the faults it must survive.

One stack for the module, in build/test-stack (kept between runs, so the second run reuses the
services' virtual environment and the registered model); stopped at the end. Every test works
under its own S3 prefix. Run: ``.venv/bin/python -m pytest tests/test_stack.py -m stack``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from neuralstyle import stack as stack_mod
from neuralstyle.config import mlflow_scope

pytestmark = [pytest.mark.stack, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("STYLIZE_TEST_STACK_DIR", REPO / "build" / "test-stack"))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
MAX_SIZE = "192"  # small results: the machine has 2 cores, the tests are about the plumbing


@pytest.fixture(scope="module")
def stack():
    s = stack_mod.up(STACK_DIR)
    yield s
    stack_mod.down(STACK_DIR)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def client_env(s: stack_mod.Stack) -> dict[str, str]:
    """What a user has after ``. stack/env``."""
    env = {**os.environ, **s.client_env(), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_REGISTRY_URI", "AWS_PROFILE"):
        env.pop(name, None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def workdir(tmp_path: Path, name: str) -> Path:
    """Where workers run (their data/ and out/), with the project's luigi.cfg, like the repo.

    Workers of one batch share it, as the README's commands run from one checkout. Workers in
    separate folders (separate machines) work too: PublishStylized stylizes again when the
    staged file is not there (tests/pipeline/test_pipeline.py).
    """
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(REPO / "luigi.cfg", folder / "luigi.cfg")
    return folder


def upload_photos(s: stack_mod.Stack, prefix: str, count: int) -> list[str]:
    from neuralstyle.builder.samples import sample_jpeg

    client = stack_mod.s3_client(s)
    keys = []
    for i in range(count):
        key = f"{prefix}/in/{i:02d}-{PHOTOS[i % len(PHOTOS)]}.jpg"
        client.put_object(Bucket=stack_mod.PHOTO_BUCKET, Key=key,
                          Body=sample_jpeg(PHOTOS[i % len(PHOTOS)]), ContentType="image/jpeg")
        keys.append(key)
    return keys


def listed(s: stack_mod.Stack, prefix: str) -> dict[str, int]:
    client = stack_mod.s3_client(s)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=stack_mod.PHOTO_BUCKET,
                                                             Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


def assert_results_complete(s: stack_mod.Stack, prefix: str, inputs: list[str]) -> None:
    """Every photo has exactly one result under out/, each a whole JPEG; nothing else is there."""
    from PIL import Image

    client = stack_mod.s3_client(s)
    wanted = {k.replace("/in/", "/out/").replace(".jpg", "-7.jpg") for k in inputs}
    have = {k for k in listed(s, f"{prefix}/out/")}
    assert have == wanted
    for key in sorted(have):
        body = client.get_object(Bucket=stack_mod.PHOTO_BUCKET, Key=key)["Body"].read()
        image = Image.open(io.BytesIO(body))
        image.load()  # a truncated JPEG raises here
        assert max(image.size) == int(MAX_SIZE)


def batch_command(tool: str, prefix: str, workers: int = 1) -> list[str]:
    """``python -m tasks.run`` or plain ``luigi`` over one S3 prefix, scheduled by luigid."""
    images, results = f"s3://photos/{prefix}/in/", f"s3://photos/{prefix}/out/"
    if tool == "tasks.run":
        return [sys.executable, "-m", "tasks.run", "--image", images, "--output", results,
                "--workers", str(workers), "--max-size", MAX_SIZE,
                "--server-url", "$STYLIZE_SERVER_URL"]
    return [sys.executable, "-m", "luigi", "--module", "tasks", "StylizeBatch", "--images", images,
            "--results", results, "--max-size", MAX_SIZE, "--workers", str(workers)]


def start_worker(s: stack_mod.Stack, folder: Path, command: list[str], log_name: str = "worker"
                 ) -> subprocess.Popen:
    env = client_env(s)
    command = [env["STYLIZE_SERVER_URL"] if c == "$STYLIZE_SERVER_URL" else c for c in command]
    log = open(folder / f"{log_name}.log", "wb")  # noqa: SIM115 - the child keeps it
    return subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stylized_lines(folder: Path, log_name: str = "worker") -> list[str]:
    """The photos this worker stylized, from its log (one line per Stylize run)."""
    text = (folder / f"{log_name}.log").read_text(errors="replace")
    return re.findall(r"stylized (s3://\S+) ->", text)


def running_events(s: stack_mod.Stack, prefix: str) -> dict[str, int]:
    """luigid's task history in PostgreSQL: how often each Stylize of ``prefix`` was RUNNING."""
    conn = stack_mod._pg_connect(s, "luigi", user=stack_mod.DB_USER)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(
            "select p.value, count(*) from tasks t join task_events e on e.task_id = t.id "
            "join task_parameters p on p.task_id = t.id "
            "where t.name = 'Stylize' and e.event_name = 'RUNNING' and p.name = 'image' "
            "and p.value like %s group by p.value",
            (f"s3://photos/{prefix}/%",),
        )
        return dict(cur.fetchall())


def no_leftovers(*folders: Path) -> list[str]:
    return [str(p) for f in folders for p in f.rglob("*-luigi-tmp-*")]


# ---- the stack itself --------------------------------------------------------------------------

def test_status_lists_every_service_healthy(stack):
    result = subprocess.run([sys.executable, "-m", "neuralstyle.stack", "status", "--dir",
                             str(STACK_DIR)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in stack_mod.SERVICE_NAMES:
        assert re.search(rf"^{name}\s+\S+\s+pid \d+\s+healthy$", result.stdout, re.M), result.stdout


def test_package_models_and_pipeline_use_the_stack(stack, prefix, tmp_path):
    """``. stack/env`` then the README's commands: the registry, S3 and luigid of the stack."""
    env = client_env(stack)
    # Registering the same weights and code again registers nothing, and says which version has them.
    again = subprocess.run([sys.executable, "package_models.py"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "already" in (again.stdout + again.stderr).lower()
    inputs = upload_photos(stack, prefix, 2)
    folder = workdir(tmp_path, "w")
    worker = start_worker(stack, folder, batch_command("tasks.run", prefix))
    assert worker.wait(timeout=600) == 0, (folder / "worker.log").read_text()[-3000:]
    assert_results_complete(stack, prefix, inputs)
    assert "mlflow: run" in (folder / "worker.log").read_text()
    assert sum(running_events(stack, prefix).values()) == 2  # luigid recorded them


def test_restart_keeps_registry_artifacts_and_photos(stack, prefix):
    from mlflow import MlflowClient

    inputs = upload_photos(stack, prefix, 1)
    env = client_env(stack)
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    try:
        registry = MlflowClient(tracking_uri=stack.url("mlflow"), registry_uri=stack.url("mlflow"))
        before = registry.get_model_version_by_alias("style-transfer", "champion")
        stack_mod.down(STACK_DIR)
        stopped = subprocess.run([sys.executable, "-m", "neuralstyle.stack", "status", "--dir",
                                  str(STACK_DIR)], capture_output=True, text=True, cwd=REPO)
        assert stopped.returncode == 1 and stopped.stdout.count("DOWN: not running") == 5
        stack_mod.up(STACK_DIR)
        after = registry.get_model_version_by_alias("style-transfer", "champion")
        assert (after.version, after.tags) == (before.version, before.tags)
        files = registry.list_artifacts(after.run_id)
        assert files, "the packaging run's artifacts are gone"
        assert inputs[0] in listed(stack, prefix)
        assert requests.get(stack.url("model") + "/ping", timeout=5).status_code == 200
    finally:
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)


# ---- many workers, one prefix ------------------------------------------------------------------

def test_two_worker_processes_stylize_each_photo_exactly_once(stack, prefix, tmp_path):
    """``python -m tasks.run --workers 2`` and plain ``luigi --module tasks`` at once, one luigid."""
    inputs = upload_photos(stack, prefix, 6)
    folder = workdir(tmp_path, "w")
    workers = [start_worker(stack, folder, batch_command("tasks.run", prefix, workers=2), "a"),
               start_worker(stack, folder, batch_command("luigi", prefix), "b")]
    codes = [w.wait(timeout=900) for w in workers]
    logs = [(folder / f"{n}.log").read_text(errors="replace") for n in "ab"]
    assert codes == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert_results_complete(stack, prefix, inputs)
    done = stylized_lines(folder, "a") + stylized_lines(folder, "b")
    assert sorted(done) == sorted(f"s3://photos/{k}" for k in inputs)  # each once, in all
    assert stylized_lines(folder, "a") and stylized_lines(folder, "b"), \
        "one worker process did all the work: not concurrent"
    assert running_events(stack, prefix) == {f"s3://photos/{k}": 1 for k in inputs}
    assert no_leftovers(folder) == []
    page = requests.get(stack.url("luigid") + "/api/task_list", params={"data": '{"status":"DONE"}'},
                        timeout=10).text
    assert prefix in page  # the scheduler's page shows them


# ---- security ----------------------------------------------------------------------------------

def test_anonymous_requests_are_refused(stack):
    mlflow_url = stack.url("mlflow")
    assert requests.get(mlflow_url + "/health", timeout=10).status_code == 200
    search = requests.get(mlflow_url + "/api/2.0/mlflow/registered-models/search", timeout=10)
    assert search.status_code == 401
    create = requests.post(mlflow_url + "/api/2.0/mlflow/registered-models/create",
                           json={"name": "intruder"}, timeout=10)
    assert create.status_code == 401
    wrong = requests.get(mlflow_url + "/api/2.0/mlflow/registered-models/search",
                         auth=("admin", "not-the-password"), timeout=10)
    assert wrong.status_code == 401
    artifacts = requests.get(mlflow_url + "/api/2.0/mlflow-artifacts/artifacts", timeout=10)
    assert artifacts.status_code == 401
    assert requests.get(stack.url("s3") + "/photos/", timeout=10).status_code == 403
    assert requests.get(stack.url("s3") + "/mlflow/", timeout=10).status_code == 403


def stack_pids(s: stack_mod.Stack) -> list[int]:
    from neuralstyle.run.serving import _group_pids

    pids = []
    for name in stack_mod.SERVICE_NAMES:
        pid = stack_mod.running_pid(s, name)
        assert pid, f"{name} is not running"
        pids += _group_pids(pid)
    return pids


def listening_sockets(pids: list[int]) -> list[str]:
    """``ip:port`` of every TCP socket in LISTEN state held by ``pids`` (from /proc)."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", 4), ("tcp6", 6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                if family == 4:
                    ip = ".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    ip = f"[{address}]"
                found.append(f"{ip}:{int(port, 16)}")
    return found


def test_services_are_unprivileged_and_listen_on_loopback_only(stack):
    pids = stack_pids(stack)
    sockets = listening_sockets(pids)
    assert sockets, "found no listening socket of the stack"
    assert [s for s in sockets if not s.startswith("127.0.0.1:")] == []
    if os.geteuid() == 0:
        uids = {pid: Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
                for pid in pids if Path(f"/proc/{pid}").exists()}
        assert {pid: u for pid, u in uids.items() if "0" in u} == {}
    for name in ("env", "secrets/mlflow-admin-password", "secrets/pgpass", "secrets/s3.json",
                 "secrets/basic_auth.ini"):
        assert (STACK_DIR / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"


def secret_values(s: stack_mod.Stack) -> dict[str, str]:
    names = ("postgres-password", "db-password", "mlflow-admin-password", "flask-secret-key",
             "s3-secret-access-key")
    return {name: s.secret(name) for name in names}


def test_no_secret_in_logs_process_titles_or_params(stack):
    found = []
    secrets = secret_values(stack)
    for path in sorted((STACK_DIR / "logs").rglob("*")) + [STACK_DIR / "luigi.cfg",
                                                            STACK_DIR / "luigid" / "luigid.cfg"]:
        if path.is_file():
            text = path.read_text(errors="replace")
            found += [f"{name} in {path}" for name, value in secrets.items() if value in text]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found += [f"{name} in the title of pid {proc.name}"
                          for name, value in secrets.items() if value in title]
    conn = stack_mod._pg_connect(stack, "mlflow", user=stack_mod.DB_USER)
    with contextlib.closing(conn), conn.cursor() as cur:
        for table, column in (("params", "value"), ("tags", "value"),
                              ("model_version_tags", "value"), ("runs", "name")):
            cur.execute(f"select {column} from {table}")  # noqa: S608 - fixed names
            values = [row[0] or "" for row in cur.fetchall()]
            found += [f"{name} in mlflow {table}" for name, value in secrets.items()
                      if any(value in v for v in values)]
            assert table != "params" or values, "no params at all: the check would prove nothing"
    assert found == []


# ---- faults ------------------------------------------------------------------------------------

def wait_for(predicate, timeout: float, what: str, step: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def test_kill_9_of_one_worker_mid_batch(stack, prefix, tmp_path, record_property):
    """The other worker finishes; a rerun completes the rest; nothing half-written, no duplicate."""
    inputs = upload_photos(stack, prefix, 6)
    folder = workdir(tmp_path, "w")
    victim = start_worker(stack, folder, batch_command("luigi", prefix), "victim")
    survivor = start_worker(stack, folder, batch_command("luigi", prefix), "survivor")
    wait_for(lambda: stylized_lines(folder, "victim"), 300, "the first photo of the doomed worker")
    kill_group(victim)
    killed_at = time.monotonic()
    survivor_code = survivor.wait(timeout=600)
    survived = time.monotonic() - killed_at
    rerun = start_worker(stack, folder, batch_command("luigi", prefix), "rerun")
    assert rerun.wait(timeout=600) == 0, (folder / "rerun.log").read_text()[-3000:]
    recovered = time.monotonic() - killed_at
    record_property("recover_s", round(recovered, 1))
    print(f"kill -9 worker: survivor exit {survivor_code} {survived:.1f} s after the kill, "
          f"with the rerun everything done {recovered:.1f} s after it")
    assert_results_complete(stack, prefix, inputs)
    assert no_leftovers(folder) == []
    # A photo the killed worker was stylizing may run twice (its run died); none runs more.
    assert max(running_events(stack, prefix).values()) <= 2


def reenable_disabled(s: stack_mod.Stack, prefix: str) -> int:
    """Re-enable the tasks luigid disabled after repeated failures (what its page's button does)."""
    import json

    url = s.url("luigid") + "/api/"
    disabled = requests.get(url + "task_list", params={"data": json.dumps({"status": "DISABLED"})},
                            timeout=10).json()["response"]
    ours = [task_id for task_id, info in disabled.items() if prefix in json.dumps(info)]
    for task_id in ours:
        requests.post(url + "re_enable_task", data={"data": json.dumps({"task_id": task_id})},
                      timeout=10).raise_for_status()
    return len(ours)


def test_kill_9_of_the_model_server_mid_batch(stack, prefix, tmp_path, record_property):
    """The worker's client names the server and the error; after a restart a rerun completes."""
    inputs = upload_photos(stack, prefix, 6)
    folder = workdir(tmp_path, "w")
    worker = start_worker(stack, folder, batch_command("tasks.run", prefix))
    wait_for(lambda: stylized_lines(folder), 300, "the first stylized photo")
    model_pid = stack_mod.running_pid(stack, "model")
    os.killpg(model_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    code = worker.wait(timeout=600)
    log = (folder / "worker.log").read_text(errors="replace")
    assert code == 1, log[-3000:]
    assert stack.url("model") in log  # the error names the server it could not reach
    status = subprocess.run([sys.executable, "-m", "neuralstyle.stack", "status", "--dir",
                             str(STACK_DIR)], capture_output=True, text=True, cwd=REPO)
    assert status.returncode == 1 and re.search(r"^model .* DOWN", status.stdout, re.M)
    stack_mod.up(STACK_DIR)
    reenabled = reenable_disabled(stack, prefix)  # the page's "re-enable" button
    print(f"kill -9 model server: re-enabled {reenabled} disabled tasks on luigid")
    rerun_folder = workdir(tmp_path, "rerun")
    rerun = start_worker(stack, rerun_folder, batch_command("tasks.run", prefix))
    assert rerun.wait(timeout=600) == 0, (rerun_folder / "worker.log").read_text()[-3000:]
    recovered = time.monotonic() - killed_at
    record_property("recover_s", round(recovered, 1))
    print(f"kill -9 model server: recovered in {recovered:.1f} s")
    assert_results_complete(stack, prefix, inputs)
    assert no_leftovers(folder, rerun_folder) == []
    assert len(stylized_lines(folder)) + len(stylized_lines(rerun_folder)) == len(inputs)


def test_s3_server_stopped_mid_transfer(stack, prefix, tmp_path, record_property):
    """A download and an upload cut by the S3 server dying (kill -9): no partial file or object."""
    import boto3
    from botocore.config import Config

    from tasks.base import download_s3_object, upload_file_atomic

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(48 * 1024 * 1024))
    key = f"{prefix}/big.bin"
    client = stack_mod.s3_client(stack)
    client.upload_file(str(big), stack_mod.PHOTO_BUCKET, key)
    client_plain = boto3.client(  # a plain client: no retries, short timeouts
        "s3", endpoint_url=stack.url("s3"), region_name=stack_mod.S3_REGION,
        aws_access_key_id=stack.secret("s3-access-key-id"),
        aws_secret_access_key=stack.secret("s3-secret-access-key"),
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3,
                      read_timeout=10),
    )
    s3_service = next(s for s in stack_mod.SERVICES if s.name == "s3")
    dest = tmp_path / "down" / "big.bin"
    dest.parent.mkdir()
    errors = {}

    def cut(action, started_when=lambda: True):
        import threading

        def stop_soon():
            wait_for(started_when, 60, "the transfer to start", step=0.01)
            # kill -9: SIGTERM lets weed finish the requests in flight, which cuts nothing.
            os.killpg(stack_mod.running_pid(stack, "s3"), signal.SIGKILL)

        thread = threading.Thread(target=stop_soon)
        thread.start()
        try:
            action()
        except Exception as exc:  # the error the user sees
            errors[action.__name__] = f"{type(exc).__name__}: {exc}"
        thread.join()

    def download():
        download_s3_object(f"s3://photos/{key}", dest, client=client_plain)

    def download_begun():  # the temporary file has bytes: the transfer is under way
        return any(p.stat().st_size > 0 for p in dest.parent.glob("*-luigi-tmp-*"))

    started = time.monotonic()
    cut(download, download_begun)
    stack_mod.start_service(stack, s3_service)
    assert "download" in errors, "the download finished before the server stopped"
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    def upload():
        upload_file_atomic(big, f"s3://photos/{key}.copy", client=client_plain)

    cut(upload)
    stack_mod.start_service(stack, s3_service)
    recovered = time.monotonic() - started
    assert "upload" in errors, "the upload finished before the server stopped"
    print("S3 stopped:", errors)
    assert f"{key}.copy" not in listed(stack, prefix)  # no partial object
    # The rerun completes, whole.
    download_s3_object(f"s3://photos/{key}", dest, client=client)
    upload_file_atomic(big, f"s3://photos/{key}.copy", client=client)
    assert dest.read_bytes() == big.read_bytes()
    assert listed(stack, prefix)[f"{key}.copy"] == big.stat().st_size
    record_property("recover_s", round(recovered, 1))


def test_output_disk_full(stack, prefix, tmp_path):
    """Results into a full file system: a clear error, earlier results untouched, no partial file."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs: run it as root (CI does)")
    inputs = upload_photos(stack, prefix, 3)
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        folder = workdir(tmp_path, "w")
        first = start_worker(stack, folder, [
            sys.executable, "-m", "tasks.run", "--image", f"s3://photos/{inputs[0]}",
            "--output", str(mount / "first.jpg"), "--max-size", "96",
            "--server-url", client_env(stack)["STYLIZE_SERVER_URL"]])
        assert first.wait(timeout=300) == 0, (folder / "worker.log").read_text()[-2000:]
        earlier = (mount / "first.jpg").read_bytes()
        filler = mount / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            fh.write(b"\0" * (64 * 1024))
        folder2 = workdir(tmp_path, "w2")
        second = start_worker(stack, folder2, [
            sys.executable, "-m", "tasks.run", "--image", f"s3://photos/{inputs[1]}",
            "--output", str(mount / "second.jpg"), "--max-size", "512",
            "--server-url", client_env(stack)["STYLIZE_SERVER_URL"]])
        assert second.wait(timeout=300) == 1
        log = (folder2 / "worker.log").read_text(errors="replace")
        assert "No space left on device" in log
        assert str(mount / "second.jpg") in log or "second" in log
        # the first result and its lineage sidecar; nothing of the second, not even its sidecar
        assert sorted(p.name for p in mount.iterdir()) == [
            "filler", "first.jpg", "first.jpg.lineage.json"]
        assert (mount / "first.jpg").read_bytes() == earlier
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def registry_versions(s: stack_mod.Stack) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.url("mlflow"), registry_uri=s.url("mlflow"))
    return {v.version: v for v in client.search_model_versions("name='style-transfer'")}


def test_postgres_restarted_while_registering(stack, tmp_path, record_property, monkeypatch):
    """A version is whole (files, tags, alias) or absent; a rerun finishes the job."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    env = client_env(stack)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(name, env[name])
    before = registry_versions(stack)
    log_path = tmp_path / "package.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "package_models.py", "--force"], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    postgres = next(s for s in stack_mod.SERVICES if s.name == "postgres")
    # The registry is written from here on: the model's files, the version, its tags, the alias.
    wait_for(lambda: "Validating input example" in log_path.read_text(errors="replace"), 600,
             "package_models.py to log the model")
    stack_mod.stop_service(stack, postgres)
    restarted_at = time.monotonic()
    time.sleep(2)
    stack_mod.start_service(stack, postgres)
    code = proc.wait(timeout=900)
    output = log_path.read_text(errors="replace")
    if code != 0:  # the user saw an error: a rerun must finish the job
        rerun = subprocess.run([sys.executable, "package_models.py"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=900)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    recovered = time.monotonic() - restarted_at
    record_property("recover_s", round(recovered, 1))
    print(f"PostgreSQL restart: package_models exit {code}; recovered in {recovered:.1f} s;"
          f" last lines: {output.strip().splitlines()[-2:]}")
    after = registry_versions(stack)
    for number, version in after.items():  # no half-made version, old or new
        assert version.status == "READY", number
        assert version.tags.get("fingerprint") and version.tags.get("weight_sha256"), number
    champion = MlflowClient(tracking_uri=stack.url("mlflow"), registry_uri=stack.url("mlflow")
                            ).get_model_version_by_alias("style-transfer", "champion")
    assert champion.version in after
    # mlflow's process-wide URI (set by earlier tests' scopes) outranks the environment: scope it
    with mlflow_scope(stack.url("mlflow")):
        files = Path(download_artifacts(f"models:/style-transfer/{champion.version}",
                                        dst_path=str(tmp_path / "model")))
    assert (files / "MLmodel").is_file() and any(files.rglob("*.onnx"))
    assert len(after) - len(before) <= 1  # the forced run made at most one version

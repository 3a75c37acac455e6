"""Postgres for teams: the smoke nightly against a real PostgreSQL server, configured with exactly the block
that `dagster_home/dagster.yaml` documents (uncommented), its port and credentials from the environment."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("dagster_postgres", reason="the `postgres` extra is not installed")
pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


def documented_block(text: str) -> str:
    """The commented `storage:` block of dagster.yaml, uncommented as a user would."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   storage:"))
    block = []
    for line in lines[start:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    return "\n".join(block) + "\n"


@pytest.fixture
def postgres():
    """A PostgreSQL server on a free loopback port in a temporary folder; (port, user, database)."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (Debian: apt install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="townlet-pg-"))  # outside pytest's 0700 base: the server's user reads it
    os.chmod(folder, 0o755)
    data = folder / "pg"
    data.mkdir()
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the packaged `postgres` user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        try:
            shutil.chown(data, "postgres")
        except (LookupError, PermissionError):
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "townlet", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-w", "-o",
                    f"-p {port} -h 127.0.0.1 -k {data}", "start"], check=True, capture_output=True)
    try:
        createdb = _binary("createdb")
        subprocess.run([createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "townlet", "dagster"], check=True,
                       capture_output=True)
        yield port, "townlet", "dagster"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_smoke_nightly_runs_against_postgres_with_the_documented_block(postgres, tmp_path, monkeypatch):
    from dagster import DagsterInstance, DagsterRunStatus

    port, user, database = postgres
    home = tmp_path / "home"
    home.mkdir()
    ours = (ROOT / "dagster_home" / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text(ours + documented_block(ours))
    env = {"DAGSTER_HOME": str(home), "TOWNLET_CONFIG": "smoke", "TOWNLET_ARTIFACTS": str(tmp_path / "artifacts"),
           "DAGSTER_PG_USERNAME": user, "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_HOST": "127.0.0.1",
           "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_DB": database}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dagster_bin = Path(sys.executable).parent / "dagster"
    done = subprocess.run([str(dagster_bin), "job", "execute", "-m", "townlet_pipelines.pipeline.definitions", "-j",
                           "nightly_anneal", "--tags", '{"dagster/partition": "2026-11-05"}'], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert [run.status for run in runs] == [DagsterRunStatus.SUCCESS]
        from dagster import AssetKey

        smoke_release = AssetKey(["smoke", "promoted_policy"])  # a profile other than default: its own key
        assert instance.get_latest_materialization_event(smoke_release) is not None

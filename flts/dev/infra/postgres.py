"""PostgreSQL: a private cluster under the state dir (MLflow's backend store), run with
Debian's initdb/pg_ctl; as the `postgres` system user when we are root (it refuses root)."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from flts.dev import processes
from flts.dev.infra import service
from flts.dev.infra.config import InfraConfig, InfraError, pg_dsn, pg_password, say


def _bindir() -> Path:
    cands = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    cands = [c for c in cands if (c / "initdb").exists()]
    if cands:  # the newest major version
        return max(cands, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    which = shutil.which("pg_ctl")
    if which and (Path(which).resolve().parent / "initdb").exists():
        return Path(which).resolve().parent
    raise InfraError("PostgreSQL server (initdb/pg_ctl) not found: run `bash infra/install.sh` first")


def _run_kwargs(cfg: InfraConfig) -> dict:
    """subprocess kwargs that run PostgreSQL tools as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pw = pwd.getpwnam(cfg.pg_os_user)
    except KeyError:
        raise InfraError(
            f"postgres: running as root needs the system user {cfg.pg_os_user!r} "
            "(created by Debian's postgresql package)"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _socket_dir(cfg: InfraConfig) -> Path:
    d = cfg.state_dir / "pgsock"
    if len(str(d)) > 80:  # unix socket paths are limited to 107 bytes
        d = Path("/tmp") / f"flts-pg-{hashlib.sha1(str(cfg.state_dir).encode()).hexdigest()[:10]}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _chown_for_pg(cfg: InfraConfig, *paths: Path) -> None:
    kw = _run_kwargs(cfg)
    if not kw:
        return
    for p in paths:
        os.chown(p, kw["user"], kw["group"])


def _check_reachable(cfg: InfraConfig, path: Path) -> None:
    """As root, the postgres user must be able to traverse every parent of the data dir."""
    kw = _run_kwargs(cfg)
    if not kw:
        return
    r = subprocess.run(["test", "-x", str(path), "-a", "-w", str(path)], **kw)
    if r.returncode != 0:
        raise InfraError(
            f"postgres: the system user {cfg.pg_os_user!r} cannot write {path} (a parent folder "
            f"lacks o+x?): chmod o+x the parents, or set FLTS_STATE to a folder it can reach"
        )


def probe(cfg: InfraConfig, database: str = "postgres") -> bool:
    """A password login and `select 1` succeed."""
    if not processes.port_open(cfg.host, cfg.pg_port):
        return False
    import psycopg2

    conn = psycopg2.connect(pg_dsn(cfg, database))
    try:
        with conn.cursor() as cur:
            cur.execute("select 1")
            return cur.fetchone()[0] == 1
    finally:
        conn.close()


def _initdb(cfg: InfraConfig, bindir: Path, pdir: Path, data: Path) -> None:
    """Create the cluster (first start only); the password goes through a 0600 file, never argv."""
    say(f"postgres: initdb {data}")
    pwfile = pdir / ".pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(pg_password(cfg) + "\n")
    _chown_for_pg(cfg, pwfile)
    log = cfg.log_file("postgres")
    try:
        with open(log, "a") as fh:
            r = subprocess.run(
                [str(bindir / "initdb"), "-D", str(data), "-U", cfg.pg_user, f"--pwfile={pwfile}",
                 "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                 "--locale=C", "--no-sync"],
                stdout=fh, stderr=subprocess.STDOUT, cwd=pdir, **_run_kwargs(cfg),
            )
    finally:
        pwfile.unlink(missing_ok=True)
    if r.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise InfraError(f"postgres: initdb failed:\n{processes.log_tail(log)}")


def _pg_ctl_start(cfg: InfraConfig, bindir: Path, pdir: Path, data: Path) -> int:
    """pg_ctl starts the postmaster (in a session of its own) and waits; return the postmaster's pid."""
    sock = _socket_dir(cfg)
    _chown_for_pg(cfg, sock)
    opts = (
        f"-p {cfg.pg_port} -k {sock} -c listen_addresses={cfg.host} "
        "-c max_connections=50 -c shared_buffers=64MB -c fsync=off -c full_page_writes=off "
        "-c synchronous_commit=off"
    )
    say(f"postgres: starting on {cfg.host}:{cfg.pg_port} ...")
    log = cfg.log_file("postgres")
    with open(log, "a") as fh:
        r = subprocess.run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t",
             str(int(cfg.start_timeout)), "start"],
            stdout=fh, stderr=subprocess.STDOUT, cwd=pdir, **_run_kwargs(cfg),
        )
    pid = service.postmaster_pid(data)
    if r.returncode != 0 or pid is None:
        raise InfraError(f"postgres: pg_ctl start failed:\n{processes.log_tail(log)}")
    return pid


@service.locked("postgres")
def start_postgres(cfg: InfraConfig) -> int:
    """Start a private PostgreSQL cluster under the state dir; create the MLflow database."""
    url = f"postgresql://{cfg.pg_user}@{cfg.host}:{cfg.pg_port}/{cfg.pg_database}"
    pid = service.ensure_started(cfg, "postgres", url, lambda: probe(cfg), [(cfg.pg_port, "FLTS_PG_PORT")],
                                 lambda: _launch(cfg))
    _create_database(cfg, cfg.pg_database)
    return pid


def _launch(cfg: InfraConfig) -> int:
    name, bindir = "postgres", _bindir()
    pdir = cfg.service_dir(name)
    data = pdir / "data"
    pdir.mkdir(parents=True, exist_ok=True)
    _chown_for_pg(cfg, pdir)
    _check_reachable(cfg, pdir)
    t0 = time.monotonic()
    processes.log_mark(cfg.log_file(name), name)
    _chown_for_pg(cfg, cfg.log_file(name))  # pg_ctl -l: the postmaster appends to it
    if not (data / "PG_VERSION").exists():
        _initdb(cfg, bindir, pdir, data)
    pid = _pg_ctl_start(cfg, bindir, pdir, data)
    service.write_pid(cfg, name, pid)
    service.wait_ready(cfg, name, pid, lambda: probe(cfg))
    say(f"postgres: ready in {time.monotonic() - t0:.1f}s (pid {pid})")
    return pid


def _create_database(cfg: InfraConfig, db: str) -> None:
    import psycopg2

    conn = psycopg2.connect(pg_dsn(cfg, "postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'create database "{db}"')
                say(f"postgres: created database {db}")
    finally:
        conn.close()

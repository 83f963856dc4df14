"""``python3 manage.py compose-test`` (``make compose-test``): build the images, run docker-compose.yml
with production settings, drive one round through the containers, take everything down.

No image registry is reachable on the CI machines, so the base images the production files name
(python:3.11-slim, postgres:15, redis:7) are built here from Debian packages: `debootstrap
--variant=minbase bookworm`, imported with `docker import`, then small Dockerfiles in
deploy/ci/base/. Nothing is ever pulled. The machine's CA certificates, apt sources and pip
settings are read at run time and copied into a build context that git ignores.

deploy/ci/compose.ci.yml puts every container and build on the host's network (dockerd runs with
--bridge=none) and moves each service to a loopback port of its own. The secrets are random per run.
Prints ``N passed, M failed``; the exit status is 0 only when nothing failed.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "ci" / "base"
CONTEXT = BASE / "context"
PROJECT = "quizci"
COMPOSE_FILES = [REPO / "docker-compose.yml", REPO / "deploy" / "ci" / "compose.ci.yml"]
CACHE = Path(os.environ.get("QUIZ_CI_CACHE", "/var/cache/quiz-compose-test"))
SUITE = "bookworm"
DEBOOTSTRAP_IMAGE = f"quiz-ci/debootstrap:{SUITE}"
# (tag the production files use, Dockerfile in deploy/ci/base); common first, the others build on it.
STAND_INS = [
    (f"quiz-ci/common:{SUITE}", "common.Dockerfile"),
    ("python:3.11-slim", "python.Dockerfile"),
    ("postgres:15", "postgres.Dockerfile"),
    ("redis:7", "redis.Dockerfile"),
]
# The ports deploy/ci/compose.ci.yml gives the services.
API = "http://127.0.0.1:28000"
REALTIME = "http://127.0.0.1:28001"
FLOWER = "http://127.0.0.1:25555"
REDIS_PORT = 26379
SECRET_NAMES = ("ADMIN_TOKEN", "SECRET_KEY", "POSTGRES_PASSWORD", "OWNER_DB_PASSWORD", "APP_DB_PASSWORD",
                "REDIS_PASSWORD")  # fmt: skip
READY_TIMEOUT = 240.0


def say(message: str) -> None:
    print(f"compose-test: {message}", flush=True)


def run(argv: Sequence[str], *, env: dict[str, str] | None = None, check: bool = True, capture: bool = False,
        stdin: Any = None, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=env, check=check, text=True, stdin=stdin, timeout=timeout,
                          capture_output=capture)  # fmt: skip


def docker_cli() -> str:
    # Debian's docker.io installs /usr/bin/docker, which matches its dockerd; a newer client earlier
    # on PATH (e.g. /usr/local/bin) would try BuildKit, which the legacy daemon here lacks.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise SystemExit("compose-test: no docker client; `apt-get install docker.io` (or run .ci/run)")


# --------------------------------------------------------------------------------------------
# The machine's settings, looked up at run time
# --------------------------------------------------------------------------------------------


def _deb822_blocks(text: str) -> Iterator[dict[str, str]]:
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields:
            yield fields


def apt_sources() -> list[Path]:
    apt = Path("/etc/apt")
    files = [apt / "sources.list"] if (apt / "sources.list").is_file() else []
    files += sorted(p for p in (apt / "sources.list.d").glob("*") if p.suffix in (".list", ".sources"))
    return files


def debian_mirror() -> str:
    """The first deb URI this machine's apt uses for the suite the stand-ins are built from."""
    for path in apt_sources():
        text = path.read_text()
        if path.suffix == ".sources":
            for fields in _deb822_blocks(text):
                if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split() \
                        and fields.get("enabled", "yes") != "no":  # fmt: skip
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                match = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match and match.group(2) == SUITE:
                    return match.group(1)
    raise SystemExit(f"compose-test: no apt source for Debian {SUITE} on this machine to debootstrap from")


def pip_settings() -> dict[str, str]:
    """The machine's pip index settings that also make sense inside an image (no local paths)."""
    listed = run([sys.executable, "-m", "pip", "config", "list"], capture=True, check=False).stdout
    wanted = {"index-url", "extra-index-url", "trusted-host", "timeout", "retries"}
    found: dict[str, str] = {}
    for line in listed.splitlines():
        match = re.match(r"[\w.-]+\.([\w-]+)='(.*)'$", line.strip())
        if match and match.group(1) in wanted:
            found[match.group(1)] = match.group(2)
    for key in ("index-url", "extra-index-url", "trusted-host", "timeout", "retries"):
        from_env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if from_env:
            found[key] = from_env
    for key in ("index-url", "extra-index-url"):
        if key in found:
            remote = [u for u in found[key].split() if u.startswith(("http://", "https://"))]
            if remote:
                found[key] = " ".join(remote)
            else:
                del found[key]
    return found


def write_build_context() -> None:
    """deploy/ci/base/context/: CA certificates, apt sources and pip.conf of this machine (never committed)."""
    shutil.rmtree(CONTEXT, ignore_errors=True)
    certs = CONTEXT / "ca-certificates"
    certs.mkdir(parents=True)
    for crt in sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt")):
        shutil.copy2(crt, certs / crt.name)
    apt = CONTEXT / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "apt.conf.d").mkdir()
    sources = apt_sources()
    if not sources:
        raise SystemExit("compose-test: this machine has no apt sources to give the images")
    (apt / "sources.list").write_text("")  # replaces debootstrap's, so no source is listed twice
    for path in sources:
        shutil.copy2(path, apt / path.relative_to("/etc/apt"))
    # Proxy and validity settings for those sources; the rest of apt.conf.d is about this host.
    for conf in sorted(Path("/etc/apt/apt.conf.d").glob("*")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if conf.is_file() and "Acquire::" in conf.read_text():
                shutil.copy2(conf, apt / "apt.conf.d" / conf.name)
    for keyring_dir in ("keyrings", "trusted.gpg.d"):
        if (Path("/etc/apt") / keyring_dir).is_dir():
            shutil.copytree(Path("/etc/apt") / keyring_dir, apt / keyring_dir)
    pip = configparser.ConfigParser()
    pip["global"] = {"cert": "/etc/ssl/certs/ca-certificates.crt", **pip_settings()}
    with (CONTEXT / "pip.conf").open("w") as handle:
        pip.write(handle)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def image_exists(docker: str, tag: str) -> bool:
    return run([docker, "image", "inspect", tag], capture=True, check=False).returncode == 0


def debootstrap_image(docker: str) -> None:
    if image_exists(docker, DEBOOTSTRAP_IMAGE):
        return
    tarball = CACHE / f"{SUITE}-minbase.tar"
    if not tarball.is_file():
        # /usr/sbin may be missing from a non-login root shell's PATH.
        debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
        if debootstrap is None:
            raise SystemExit("compose-test: debootstrap is missing; `apt-get install debootstrap` (or run .ci/run)")
        CACHE.mkdir(parents=True, exist_ok=True)
        mirror = debian_mirror()
        say(f"debootstrap --variant=minbase {SUITE} from {mirror} (once; cached in {CACHE})")
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            root = Path(scratch) / "rootfs"
            run([debootstrap, "--variant=minbase", SUITE, str(root), mirror], capture=True)
            partial = tarball.with_suffix(".partial")
            # The .debs debootstrap downloaded are no part of the image.
            run(["tar", "-C", str(root), "--exclude=./var/cache/apt/archives/*.deb", "-cf", str(partial), "."])
            partial.rename(tarball)
    say(f"docker import {tarball.name} as {DEBOOTSTRAP_IMAGE}")
    with tarball.open("rb") as handle:
        subprocess.run([docker, "import", "-", DEBOOTSTRAP_IMAGE], stdin=handle, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip


def build_stand_ins(docker: str) -> None:
    debootstrap_image(docker)
    write_build_context()
    for tag, dockerfile in STAND_INS:
        say(f"building the stand-in {tag}")
        # Never --pull: every FROM is an image built here.
        result = run([docker, "build", "--network", "host", "-q", "-f", str(BASE / dockerfile), "-t", tag,
                      str(BASE)], capture=True, check=False)  # fmt: skip
        if result.returncode != 0:
            print(result.stdout, result.stderr, sep="\n", file=sys.stderr)
            raise SystemExit(f"compose-test: building {tag} failed")


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------


@dataclass
class Compose:
    env: dict[str, str]
    docker: str
    files: list[Path] = field(default_factory=lambda: list(COMPOSE_FILES))

    def argv(self, *args: str) -> list[str]:
        files = [part for path in self.files for part in ("-f", str(path))]
        return ["docker-compose", "--project-directory", str(REPO), "-p", PROJECT, *files,
                "--profile", "monitoring", *args]  # fmt: skip

    def __call__(self, *args: str, check: bool = True, capture: bool = False,
                 timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        result = run(self.argv(*args), env=self.env, check=False, capture=capture, timeout=timeout)
        if check and result.returncode != 0:
            if capture:
                print(result.stdout[-5000:], result.stderr[-5000:], sep="\n", file=sys.stderr)
            raise subprocess.CalledProcessError(result.returncode, result.args)
        return result

    def containers(self) -> dict[str, dict[str, Any]]:
        ids = self("ps", "-a", "-q", capture=True).stdout.split()
        if not ids:
            return {}
        inspected = json.loads(run([self.docker, "inspect", *ids], capture=True).stdout)
        return {c["Config"]["Labels"]["com.docker.compose.service"]: c for c in inspected}

    def exec(self, service: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self("exec", "-T", service, *argv, check=False, capture=True, timeout=60)


def resolve_for_host_network(compose: Compose, folder: Path) -> None:
    """Run from `docker-compose config` of both files, less the published ports.

    A port mapping means nothing on the host's network and docker refuses the pair, but an override
    file can only add to a list; the production file keeps its mappings for real deployments.
    """
    document = yaml.safe_load(compose("config", capture=True).stdout)
    for spec in document["services"].values():
        if spec.get("network_mode") == "host":
            spec.pop("ports", None)
    resolved = folder / "compose.resolved.yml"  # holds the run's secrets: private, deleted after the run
    resolved.touch(mode=0o600)
    resolved.write_text(yaml.safe_dump(document, sort_keys=False))
    compose.files = [resolved]


def compose_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in SECRET_NAMES:
        env[name] = secrets.token_hex(24)
    env["FLOWER_BASIC_AUTH"] = f"ops:{secrets.token_hex(12)}"
    # docker-compose talks to the daemon itself; the legacy builder honours `build.network: host`.
    env["COMPOSE_DOCKER_CLI_BUILD"] = "0"
    env["DOCKER_BUILDKIT"] = "0"
    return env


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


@dataclass
class Results:
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def check(self, name: str, func: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            value = func()
        except Exception as exc:  # a failed check is reported and the run goes on
            self.failed.append((name, f"{type(exc).__name__}: {exc}"))
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            return None
        self.passed.append(name)
        print(f"ok   {name} ({time.monotonic() - started:.1f} s)", flush=True)
        return value


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # not up yet
            last = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout:.0f} s" + (f" (last error: {last})" if last else ""))


class Events:
    """A Socket.IO client that records every event, to wait on."""

    def __init__(self, auth: dict[str, str]) -> None:
        import socketio

        self.events: list[tuple[str, Any]] = []
        self.cond = threading.Condition()
        self.client = socketio.Client(reconnection=False)
        self.client.on("*", self._record)
        self.client.connect(REALTIME, auth=auth, transports=["websocket"], wait_timeout=15)

    def _record(self, event: str, data: Any = None) -> None:
        with self.cond:
            self.events.append((event, data))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[str, Any], bool], what: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for event, data in self.events:
                    if predicate(event, data):
                        return data
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {what}; got {[e for e, _ in self.events]}")
                self.cond.wait(remaining)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()


def drive_round(results: Results, env: dict[str, str], request_id: str) -> str:
    """The round's steps, each a check; returns the competition's slug. The registration is sent
    with ``request_id`` as its X-Request-ID."""
    import requests

    http = requests.Session()
    admin = {"Authorization": f"Bearer {env['ADMIN_TOKEN']}"}
    slug = f"ci{secrets.token_hex(3)}"
    comp = f"{API}/api/v1/competitions/{slug}"
    listeners: list[Events] = []

    def finished(resp: requests.Response, token: str) -> dict[str, Any]:
        assert resp.status_code in (200, 202), f"{resp.status_code} {resp.text[:300]}"
        job = resp.json()
        while job["status"] not in ("succeeded", "failed"):
            time.sleep(0.2)
            job = http.get(f"{API}/api/v1/jobs/{job['jobId']}", headers={"Authorization": f"Bearer {token}"},
                           timeout=10).json()  # fmt: skip
        assert job["status"] == "succeeded", job
        return job

    def setup() -> None:
        resp = http.post(f"{API}/api/v1/competitions", headers=admin, timeout=30,
                         json={"slug": slug, "title": "Compose test"})  # fmt: skip
        assert resp.status_code == 201, resp.text
        question = {"questionId": "Q1", "question": "6 x 7?", "answer": "42", "points": 100,
                    "kind": "board", "difficulty": "EASY"}  # fmt: skip
        resp = http.post(f"{comp}/questions", headers=admin, json=[question], timeout=30)
        assert resp.status_code == 201, resp.text
        for state in ("open", "running"):
            resp = http.patch(comp, headers=admin, json={"state": state}, timeout=30)
            assert resp.status_code == 200 and resp.json()["state"] == state, resp.text

    results.check("organiser creates and starts a competition", setup)
    spectator = results.check("a spectator connects over Socket.IO", lambda: Events({"competition": slug}))
    if spectator:
        listeners.append(spectator)

    def register() -> str:
        resp = http.post(f"{comp}/teams", headers={"Prefer": "wait=10", "X-Request-ID": request_id}, timeout=30,
                         json={"teamName": "Compose Owls", "members": ["Ann"], "email": "owls@example.com"})
        assert resp.headers.get("X-Request-ID") == request_id, resp.headers
        token = resp.json().get("teamToken")
        job = finished(resp, token)
        assert job["result"]["points"] == 1000, job
        return str(token)

    token = results.check("a team registers (registrations consumer)", register)
    if not token:
        return slug
    bearer = {"Authorization": f"Bearer {token}", "Prefer": "wait=10"}
    team = results.check("the team connects over Socket.IO with its token",
                         lambda: Events({"competition": slug, "token": token}))  # fmt: skip
    if team:
        listeners.append(team)

    def claim() -> None:
        job = finished(http.post(f"{comp}/claims", headers=bearer, json={"questionId": "Q1"}, timeout=30), token)
        assert job["result"]["question"] == "6 x 7?", job

    def answer() -> None:
        resp = http.post(f"{comp}/submissions", headers=bearer, json={"questionId": "Q1", "answer": "42"}, timeout=30)
        job = finished(resp, token)
        assert job["result"]["correct"] is True and job["result"]["totalPoints"] == 1100, job

    results.check("the team claims a question (board consumer)", claim)
    results.check("the team answers it", answer)
    if team:
        results.check("the team gets its score_update over Socket.IO", lambda: team.wait_for(
            lambda e, d: e == "score_update" and d.get("points") == 1100, "score_update with 1100 points"))
    if spectator:
        results.check("spectators get the new leaderboard over Socket.IO", lambda: spectator.wait_for(
            lambda e, d: e == "leaderboard_update"
            and any(r.get("teamName") == "Compose Owls" and r.get("points") == 1100 for r in d.get("leaderboard", [])),
            "leaderboard_update with the team at 1100"))

    def leaderboard() -> None:
        board = http.get(f"{comp}/leaderboard", timeout=10).json()["leaderboard"]
        assert board[0]["teamName"] == "Compose Owls" and board[0]["points"] == 1100, board

    results.check("the leaderboard shows the points", leaderboard)
    for listener in listeners:
        listener.close()
    http.close()
    return slug


def check_deployment(results: Results, compose: Compose, env: dict[str, str]) -> None:
    import redis
    import requests

    def migrate_finished() -> None:
        state = compose.containers()["migrate"]["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, state

    def app_role() -> None:
        query = ("SELECT rolsuper, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = 'quiz_app';"
                 "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'quiz';")  # fmt: skip
        out = compose.exec("postgres", "psql", "-U", "postgres", "-d", "quiz", "-tA", "-c", query)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["f|f|f", "0"], out.stdout

    def app_role_cannot_touch_audit_log() -> None:
        # As quiz_app over TCP with its password, exactly as the app connects.
        sql = "ALTER TABLE audit_log DISABLE TRIGGER ALL"
        out = compose.exec("postgres", "env", f"PGPASSWORD={env['APP_DB_PASSWORD']}", "psql", "-h", "127.0.0.1",
                           "-U", "quiz_app", "-d", "quiz", "-tA", "-c", sql)  # fmt: skip
        assert out.returncode != 0 and "must be owner" in out.stderr, (out.returncode, out.stdout, out.stderr)

    def api_not_root() -> None:
        out = compose.exec("api", "id", "-u")
        assert out.returncode == 0 and out.stdout.strip() not in ("", "0"), (out.stdout, out.stderr)

    def redis_password_and_persistence() -> None:
        anonymous = redis.Redis(port=REDIS_PORT, socket_timeout=5)
        try:
            anonymous.ping()
        except redis.AuthenticationError:
            pass
        else:
            raise AssertionError("Redis answered without a password")
        finally:
            anonymous.close()
        client = redis.Redis(port=REDIS_PORT, password=env["REDIS_PASSWORD"], socket_timeout=5)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            client.close()

    def flower_login() -> None:
        assert requests.get(f"{FLOWER}/healthcheck", timeout=10).status_code == 200
        assert requests.get(f"{FLOWER}/workers", timeout=10).status_code == 401
        user, password = env["FLOWER_BASIC_AUTH"].split(":", 1)
        assert requests.get(f"{FLOWER}/workers", auth=(user, password), timeout=10).status_code == 200

    def limits_and_logs() -> None:
        for name, container in compose.containers().items():
            host = container["HostConfig"]
            if name not in ("postgres", "redis", "migrate"):
                assert host["Memory"] > 0, f"{name} has no memory limit"
            assert host["LogConfig"]["Config"].get("max-size"), f"{name} logs are not rotated"
            assert host["Init"] is True, f"{name} runs without an init"
            if name != "migrate":
                assert host["RestartPolicy"]["Name"] == "unless-stopped", name

    results.check("migrate ran to completion as the owner", migrate_finished)
    results.check("the app's database role is no superuser and owns nothing", app_role)
    results.check("the app's role cannot switch off the audit log's trigger", app_role_cannot_touch_audit_log)
    results.check("the app image runs as a non-root user", api_not_root)
    results.check("Redis needs its password and keeps an append-only file", redis_password_and_persistence)
    results.check("Flower answers only with its login", flower_login)
    results.check("every container has limits, log rotation, an init and a restart policy", limits_and_logs)


INFRASTRUCTURE = ("postgres", "redis", "migrate")


# What a log record looks like when it bypassed the JSON set-up: our text format, gunicorn's default.
_TEXT_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ "
                          r"|\[\d{4}-\d\d-\d\d [^]]*\] \[\d+\] \[[A-Z]+\])")


def json_logs_follow(compose: Compose, request_id: str) -> None:
    """Every app process logs JSON records (start-up banners and the like are not records), and the
    registration's request id is in both the API's and the registrations consumer's lines."""
    app = [name for name in compose.containers() if name not in INFRASTRUCTURE]
    carrying: set[str] = set()
    for name in app:
        out = compose("logs", "--no-color", "--no-log-prefix", name, capture=True, timeout=60).stdout
        records = 0
        for line in out.splitlines():
            assert not _TEXT_RECORD.match(line), f"{name} logged a text record: {line[:300]}"
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            assert {"time", "level", "process", "message"} <= record.keys(), (name, record)
            records += 1
            if record.get("request_id") == request_id:
                carrying.add(name)
        assert records, f"{name} logged no JSON record"
    assert {"api", "registrations"} <= carrying, f"only {sorted(carrying)} logged {request_id}"


def backup_and_restore(compose: Compose, slug: str) -> None:
    """docs/operations.md, "Backup and restore", as written: dump, stop the writers, restore, migrate, start.

    Afterwards the round's team is still on the leaderboard and a new registration succeeds, so the
    restore kept the app role's grants.
    """
    import requests

    with tempfile.TemporaryFile() as dump:
        subprocess.run(compose.argv("exec", "-T", "postgres", "pg_dump", "-U", "postgres", "-d", "quiz",
                                    "--format=custom"), env=compose.env, stdout=dump, check=True, timeout=120)
        assert dump.tell() > 1000, "the dump is empty"
        dump.seek(0)
        writers = [name for name in compose.containers() if name not in INFRASTRUCTURE]
        compose("stop", *writers, capture=True, timeout=120)
        subprocess.run(compose.argv("exec", "-T", "postgres", "pg_restore", "-U", "postgres", "-d", "quiz",
                                    "--clean", "--if-exists", "--exit-on-error"),
                       env=compose.env, stdin=dump, check=True, capture_output=True, timeout=120)  # fmt: skip
    compose("run", "--rm", "migrate", capture=True, timeout=180)
    compose("up", "-d", capture=True, timeout=300)
    wait_until(lambda: requests.get(f"{API}/readyz", timeout=3).ok, READY_TIMEOUT, "the API after the restore")
    board = requests.get(f"{API}/api/v1/competitions/{slug}/leaderboard", timeout=10).json()["leaderboard"]
    assert [(r["teamName"], r["points"]) for r in board] == [("Compose Owls", 1100)], board
    resp = requests.post(f"{API}/api/v1/competitions/{slug}/teams", headers={"Prefer": "wait=10"}, timeout=30,
                         json={"teamName": "Restored Foxes", "members": ["Bo"], "email": "foxes@example.com"})
    assert resp.status_code == 200 and resp.json()["status"] == "succeeded", resp.text[:500]


# Run inside a consumer's container: SIGKILL its Celery process, as a crash would end it.
_CRASH = """
import os, signal
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
    except OSError:
        continue
    if b'worker' in argv and b'-Q' in argv:
        os.kill(int(pid), signal.SIGKILL)
"""


def crashed_consumer_comes_back(compose: Compose, service: str = "board-0") -> None:
    """The restart policy at work: a consumer that dies is started again and is healthy."""
    before = compose.containers()[service]["RestartCount"]
    out = compose.exec(service, "python", "-c", _CRASH)
    assert out.returncode == 0, out.stderr

    def back() -> bool:
        container = compose.containers()[service]
        state = container["State"]
        return bool(container["RestartCount"] > before and state["Status"] == "running"
                    and state.get("Health", {}).get("Status") == "healthy")

    wait_until(back, READY_TIMEOUT, f"{service} restarted and healthy", interval=2.0)


def wait_healthy(compose: Compose, timeout: float) -> None:
    def all_healthy() -> bool:
        states = {name: c["State"] for name, c in compose.containers().items() if name != "migrate"}
        for name, state in states.items():
            if state["Status"] != "running":
                raise RuntimeError(f"{name} is {state['Status']} (exit code {state.get('ExitCode')})")
        unhealthy = [n for n, s in states.items() if s.get("Health", {}).get("Status") != "healthy"]
        if unhealthy:
            raise RuntimeError("not healthy yet: " + ", ".join(sorted(unhealthy)))
        return True

    wait_until(all_healthy, timeout, "every service healthy", interval=2.0)


def stop_gracefully(compose: Compose) -> None:
    """SIGTERM (through init) stops every process: none has to be killed.

    The grace period here is longer than production's, because this shared 2-core machine can be
    so busy that a clean shutdown of thirteen processes at once takes longer; a process that ignored
    SIGTERM would still be killed (exit code 137) and fail the check.
    """
    compose("stop", "-t", "60", capture=True, timeout=240)
    killed = {name: c["State"]["ExitCode"] for name, c in compose.containers().items()
              if c["State"]["ExitCode"] == 137}  # fmt: skip
    assert not killed, f"killed after the grace period: {killed}"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="leave the stack running (take it down yourself)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    docker = docker_cli()
    if run([docker, "info"], capture=True, check=False).returncode != 0:
        raise SystemExit("compose-test: dockerd is not running; start it with `dockerd --bridge=none` (.ci/run does)")
    build_stand_ins(docker)
    compose = Compose(compose_env(), docker)
    scratch = tempfile.TemporaryDirectory(prefix="quiz-compose-test-")
    resolve_for_host_network(compose, Path(scratch.name))
    compose("down", "-v", "--remove-orphans", capture=True)  # whatever a killed earlier run left
    results = Results()
    try:
        say("building the app image")
        compose("build", capture=True)
        say(f"images ready after {time.monotonic() - started:.0f} s; starting the stack")
        compose("up", "-d", capture=True)
        results.check("API and realtime answer on their ports", lambda: wait_until(
            lambda: __import__("requests").get(f"{API}/readyz", timeout=3).ok
            and __import__("requests").get(f"{REALTIME}/healthz", timeout=3).ok, READY_TIMEOUT, "API and realtime"))
        request_id = f"compose-test-{secrets.token_hex(8)}"
        slug = drive_round(results, compose.env, request_id)
        check_deployment(results, compose, compose.env)
        results.check("JSON logs: the registration's request id is in the API's and the consumer's lines",
                      lambda: json_logs_follow(compose, request_id))
        results.check("every service reports healthy", lambda: wait_healthy(compose, READY_TIMEOUT))
        results.check("a consumer killed by SIGKILL is restarted and healthy again",
                      lambda: crashed_consumer_comes_back(compose))
        results.check("a pg_dump backup restores over the live database (docs/operations.md)",
                      lambda: backup_and_restore(compose, slug))
        results.check("every service is healthy again after the restore", lambda: wait_healthy(compose, READY_TIMEOUT))
        if results.failed:
            logs = compose("logs", "--no-color", "--tail", "40", check=False, capture=True)
            print(logs.stdout[-20000:], file=sys.stderr)
        if not args.keep:
            results.check("every process stops on SIGTERM within its grace period", lambda: stop_gracefully(compose))
    finally:
        if not args.keep:
            compose("down", "-v", "--remove-orphans", check=False, capture=True)
            scratch.cleanup()
    print(f"compose-test took {time.monotonic() - started:.0f} s", flush=True)
    print(f"{len(results.passed)} passed, {len(results.failed)} failed", flush=True)
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

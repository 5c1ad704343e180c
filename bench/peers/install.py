"""The peers' downloads, made only when the peers are benchmarked (never by bin/setup or bin/test).

- Kafka Connect 3.9.2 and the Debezium JDBC sink: `mvn` resolves `deploy/peers/pom.xml` (profile
  `connect` for the worker's class path, `jdbc-sink` for the connector's plugin directory) into
  `.local/peers/connect/`, checked against `deploy/peers/jars.manifest` (sha256, like the broker's jars);
- Quix Streams: a virtualenv of its own in `.local/peers/quix-venv/` from `requirements-peers.txt`, so
  none of its dependencies enter the project's `.venv`.

Each is checked first and downloaded only when missing or different. What cannot be had is said in
one line (`PeerSetupError`); the tools' whole output is in a log file next to the installation.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from bench.infra import REPO

POM = REPO / "deploy" / "peers" / "pom.xml"
MANIFEST = REPO / "deploy" / "peers" / "jars.manifest"
REQUIREMENTS = REPO / "requirements-peers.txt"
MIN_JAVA = 17  # Debezium 3 needs Java 17
PLUGIN = "debezium-connector-jdbc"
# Where each Maven profile's jars go, relative to the Connect directory (as in jars.manifest).
PROFILES = {"connect": Path("lib"), "jdbc-sink": Path("plugins") / PLUGIN}


class PeerSetupError(RuntimeError):
    """A peer cannot be installed or started here; the message is one line for the operator."""


def prefix() -> Path:
    """`PIPELINE_PREFIX` as bin/setup reads it (default `.local` of the checkout)."""
    path = Path(os.environ.get("PIPELINE_PREFIX") or REPO / ".local")
    return path if path.is_absolute() else REPO / path


def peers_dir() -> Path:
    return prefix() / "peers"


@dataclass(frozen=True)
class ConnectInstall:
    """A verified Kafka Connect worker class path and plugin directory."""

    java: str
    lib: Path
    plugins: Path
    jars: int
    megabytes: float


# -- Kafka Connect + Debezium JDBC sink (Maven) ---------------------------------------------------------


def java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not found:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def manifest_problems(root: Path) -> list[str]:
    """What differs between `root` and jars.manifest: missing jars, wrong checksums (empty = verified)."""
    problems = []
    for line in MANIFEST.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        path = root / name
        if not path.is_file():
            problems.append(f"missing {name}")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"checksum of {name}")
    return problems


def ensure_connect(console: Console) -> ConnectInstall:
    """Kafka Connect + the Debezium JDBC sink in .local/peers/connect, resolved with Maven if needed."""
    java = shutil.which("java")
    if java is None:
        raise PeerSetupError("java not found: Kafka Connect needs Java 17+ (bin/setup installs "
                             "openjdk-17-jre-headless)")
    major = java_major(java)
    if major < MIN_JAVA:
        raise PeerSetupError(f"{java} is Java {major or 'of unknown version'}: Kafka Connect with Debezium 3 "
                             f"needs Java {MIN_JAVA}+")
    root = peers_dir() / "connect"
    if not manifest_problems(root):
        return _connect_install(java, root)
    mvn = shutil.which("mvn")
    if mvn is None:
        raise PeerSetupError("mvn not found: Maven resolves Kafka Connect and the Debezium JDBC sink "
                             "(apt-get install maven)")
    partial = root.with_name("connect.partial")
    shutil.rmtree(partial, ignore_errors=True)
    log = peers_dir() / "mvn.log"
    console.print(f"[bold]peers:[/] downloading Kafka Connect 3.9.2 and the Debezium JDBC sink with Maven "
                  f"(deploy/peers/pom.xml) into {root} (log: {log})")
    for profile, where in PROFILES.items():
        cmd = [mvn, "-B", "-f", str(POM), "-P", profile, "dependency:copy-dependencies",
               f"-DoutputDirectory={partial / where}", "-DincludeScope=runtime"]
        code = _stream(cmd, log, f"  maven ({profile})", console, _maven_download)
        if code != 0:
            raise PeerSetupError(f"maven could not resolve profile {profile} of deploy/peers/pom.xml: "
                                 f"{_last_error(log, '[ERROR]')} (whole output: {log})")
    problems = manifest_problems(partial)
    if problems:
        raise PeerSetupError(f"the resolved jars do not match deploy/peers/jars.manifest: "
                             f"{', '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}")
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    installed = _connect_install(java, root)
    console.print(f"  {installed.jars} jars ({installed.megabytes:.0f} MB) verified against deploy/peers/jars.manifest")
    return installed


def _connect_install(java: str, root: Path) -> ConnectInstall:
    jars = [p for p in root.rglob("*.jar")]
    return ConnectInstall(java=java, lib=root / "lib", plugins=root / "plugins", jars=len(jars),
                          megabytes=sum(p.stat().st_size for p in jars) / 1e6)


_DOWNLOADED = re.compile(r"Downloaded from [^:]+: \S+/([^/\s]+) \(([^)]*?)(?: at [^)]*)?\)")


def _maven_download(line: str) -> str | None:
    """'name (size)' of a file Maven has just downloaded, or None (the registry's address is not shown)."""
    found = _DOWNLOADED.search(line)
    return f"{found.group(1)} ({found.group(2)})" if found else None


# -- Quix Streams (a virtualenv of its own) -------------------------------------------------------------


def quix_venv() -> Path:
    return peers_dir() / "quix-venv"


def ensure_quix(console: Console) -> Path:
    """The python of a virtualenv holding requirements-peers.txt (Quix Streams), built if needed."""
    venv = quix_venv()
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    have = stamp.read_text().strip() if stamp.is_file() else ""
    if have == want and _imports(python, "quixstreams, psycopg2"):
        return python
    log = peers_dir() / "pip.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]peers:[/] installing Quix Streams (requirements-peers.txt) with pip into {venv} "
                  f"(log: {log})")
    shutil.rmtree(venv, ignore_errors=True)
    # The project's interpreter, but a separate environment: nothing here enters .venv.
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise PeerSetupError(f"could not create the virtualenv {venv}: {made.stderr.strip().splitlines()[-1:]}")
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
           "--progress-bar", "off", "-r", str(REQUIREMENTS)]
    code = _stream(cmd, log, "  pip", console, _pip_download)
    if code != 0 or not _imports(python, "quixstreams, psycopg2"):
        shutil.rmtree(venv, ignore_errors=True)
        raise PeerSetupError(f"pip could not install requirements-peers.txt: {_last_error(log, 'ERROR:')} "
                             f"(whole output: {log})")
    stamp.write_text(want + "\n")
    console.print(f"  installed {_count_packages(python)} packages into {venv}")
    return python


def _pip_download(line: str) -> str | None:
    """The file pip is fetching now ('name-version-....whl (size)'), or taking from its cache."""
    line = line.strip()
    for prefix, note in (("Downloading ", ""), ("Using cached ", ", cached")):
        if line.startswith(prefix):
            name = line.removeprefix(prefix).rsplit("/", 1)[-1]
            return name[:-1] + note + ")" if note and name.endswith(")") else name
    return None


def _imports(python: Path, modules: str) -> bool:
    if not python.exists():
        return False
    return subprocess.run([str(python), "-c", f"import {modules}"], capture_output=True).returncode == 0


def _count_packages(python: Path) -> int:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


# -- running a download tool -----------------------------------------------------------------------------


def _stream(cmd: list[str], log: Path, label: str, console: Console,
            progress_of: Callable[[str], str | None]) -> int:
    """Run `cmd`, its output into `log`, showing each file it downloads as it goes. Returns its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(log, "a") as out, console.status(f"{label}: starting ...") as status:
        out.write(f"$ {' '.join(cmd)}\n")
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    stdin=subprocess.DEVNULL, cwd=REPO)
        except OSError as e:
            raise PeerSetupError(f"cannot run {cmd[0]}: {e}") from e
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            what = progress_of(line)
            if what:
                count += 1
                status.update(f"{label}: {count} downloaded, now {what}")
                if not console.is_terminal and (".jar (" in what or ".whl (" in what):
                    console.print(f"{label}: {what}")  # no live status in a log: one line per package
        code = proc.wait()
    console.print(f"{label}: {'done' if code == 0 else f'failed (exit {code})'}, {count} files downloaded")
    return code


def _last_error(log: Path, marker: str) -> str:
    """The most telling line of a failed tool's log: its first error line that says something."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if marker in ln]
    useful = [ln for ln in lines if len(ln) > len(marker) + 2 and "Help 1" not in ln and "-> [Help" not in ln]
    text = (useful or lines or ["no error line in the log"])[0].replace("[ERROR] ", "")
    return _ADDRESS.sub("", text)[:300]  # the log has the registry's address; the one line does not need it


_ADDRESS = re.compile(r" ?\(?https?://[^\s)]*\)?")


def versions(quix_python: Path | None) -> dict[str, str]:
    """The peers' pinned versions, as deploy/peers/pom.xml and requirements-peers.txt say."""
    pom = POM.read_text()
    props = dict(re.findall(r"<([a-z0-9.]+)\.version>([^<]+)<", pom))
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", REQUIREMENTS.read_text(), flags=re.M))
    out = {"kafka_connect": props.get("kafka", "?"), "debezium_connector_jdbc": props.get("debezium", "?"),
           "postgresql_jdbc": props.get("postgresql", "?"), "quixstreams": pins.get("quixstreams", "?"),
           "quix_confluent_kafka": pins.get("confluent-kafka", "?")}
    java = shutil.which("java")
    if java:
        first = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr.splitlines()
        out["java"] = first[0] if first else "?"
    if quix_python is not None:
        probe = "import platform; print(platform.python_version())"
        out["quix_python"] = subprocess.run([str(quix_python), "-c", probe], capture_output=True,
                                            text=True).stdout.strip()
    return out

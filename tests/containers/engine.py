"""Reaching the Docker engine, with one clear line for each way that fails."""

from __future__ import annotations

import os
import shutil

import docker
import docker.errors
import requests.exceptions

SOCKET = "/var/run/docker.sock"


class EngineError(Exception):
    """The engine cannot be used; the message is the one line to print."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def where() -> str:
    return os.environ.get("DOCKER_HOST") or f"unix://{SOCKET}"


def explain(error: BaseException) -> EngineError:
    """One line for an error of the Docker client: 2 = no engine answers, 3 = no permission."""
    text = str(error)
    if "Permission denied" in text or isinstance(error, PermissionError):
        return EngineError(f"docker: permission denied on {where()}: run as root or as a member of the "
                           "docker group", 3)
    if any(s in text for s in ("No such file", "Connection refused", "FileNotFoundError", "ConnectionRefused")):
        return EngineError(f"docker: no engine answers on {where()}: start one (deploy/containers/engine "
                           "ensure, as root)", 2)
    if "no space left on device" in text.lower():
        return EngineError(f"docker: the disk of the engine is full: {first_line(text)}")
    return EngineError(f"docker: {first_line(text)}")


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "(no message)"


def connect(timeout: float = 60) -> docker.DockerClient:
    """A client whose engine has answered a ping; EngineError otherwise."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        raise explain(e) from e
    return client


def check_free_space(client: docker.DockerClient, need_bytes: int, what: str) -> None:
    """Refuse early, in one line, when the engine's disk (if it is this machine's) cannot hold `what`."""
    if not where().startswith("unix://"):
        return
    root = str(client.info().get("DockerRootDir") or "/var/lib/docker")
    if not os.path.isdir(root):
        return
    free = shutil.disk_usage(root).free
    if free < need_bytes:
        raise EngineError(f"docker: only {free >> 20} MiB free under {root}; {what} needs about "
                          f"{need_bytes >> 20} MiB")

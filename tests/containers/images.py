"""The test images, built from deploy/containers/ with no image registry, and only when their inputs change.

Each image is tagged with a hash of everything it is built from (its recipe files, the files copied
in, the hash of the image it starts FROM); an image with the current tag is used as it is. A build
goes into a temporary tag that is renamed only on success; a failed build leaves no image behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from tests.containers.engine import EngineError, check_free_space, explain, first_line
from tests.containers.runs import run_id, run_is_alive

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "deploy" / "containers"
KAFKA_DEPLOY = REPO / "deploy" / "kafka"
IMAGE_LABEL = "org.food-orders.image"  # which of our images (base, postgres, kafka)
HASH_LABEL = "org.food-orders.image-hash"
REPOSITORY = "food-orders-test"
# Bump when the way images are put together changes (context layout, import options) and not a file.
BUILDER_VERSION = "1"
NEEDS_DISK = 2 << 30  # the three images take about 1.1 GiB; the build needs room for its layers too

Say = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """One image: its name, the files it is built from (path in the build context -> file), its parent."""

    name: str
    files: tuple[tuple[str, Path], ...]
    parent: Recipe | None = None

    def digest(self) -> str:
        h = hashlib.sha256(f"{BUILDER_VERSION}\n{self.name}\n".encode())
        if self.parent is not None:
            h.update(f"FROM {self.parent.digest()}\n".encode())
        for arcname, path in sorted(self.files):
            h.update(f"{arcname}\n{oct(path.stat().st_mode & 0o111)}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
        return h.hexdigest()

    @property
    def tag(self) -> str:
        return f"{REPOSITORY}/{self.name}:{self.digest()[:16]}"


def image_set(kafka_lib: Path | None = None) -> tuple[Recipe, Recipe, Recipe]:
    """The base, PostgreSQL and Kafka recipes. The jars are represented by jars.manifest (their sha256
    sums, checked by bin/setup), not read whole for every hash."""
    base = Recipe("base", (("build-rootfs", RECIPES / "base" / "build-rootfs"),))
    postgres = Recipe("postgres", _dir_files(RECIPES / "postgres"), base)
    kafka = Recipe("kafka", (
        *_dir_files(RECIPES / "kafka"),
        ("config/server-kraft.properties", KAFKA_DEPLOY / "server-kraft.properties"),
        ("config/server-common.properties", KAFKA_DEPLOY / "server-common.properties"),
        ("lib.manifest", KAFKA_DEPLOY / "jars.manifest"),
    ), base)
    return base, postgres, kafka


def _dir_files(d: Path) -> tuple[tuple[str, Path], ...]:
    return tuple((p.name, p) for p in sorted(d.iterdir()) if p.is_file())


def kafka_lib_dir() -> Path:
    prefix = Path(os.environ.get("PIPELINE_PREFIX") or REPO / ".local")
    return (prefix if prefix.is_absolute() else REPO / prefix) / "kafka" / "lib"


def manifest_jars(manifest: Path) -> list[str]:
    """The jar names of a sha256sum manifest ("<sum>  <name>" lines)."""
    return [line.split(maxsplit=1)[1].lstrip("*") for line in manifest.read_text().splitlines() if line.strip()]


# -- ensure ----------------------------------------------------------------------------------------

def ensure_images(client: docker.DockerClient, recipes: Iterable[Recipe], say: Say) -> dict[str, str]:
    """name -> tag of each image, built (parents first) when no image has its current tag."""
    tags: dict[str, str] = {}
    for recipe in recipes:
        if _exists(client, recipe.tag):
            say(f"{recipe.tag}: present")
        else:
            check_free_space(client, NEEDS_DISK, "building the test images")
            say(f"{recipe.tag}: building")
            started = time.monotonic()
            _build(client, recipe, say)
            say(f"{recipe.tag}: built in {time.monotonic() - started:.0f}s")
            _remove_older(client, recipe, say)
        tags[recipe.name] = recipe.tag
    return tags


def _exists(client: docker.DockerClient, tag: str) -> bool:
    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise explain(e) from e


def _remove_older(client: docker.DockerClient, recipe: Recipe, say: Say) -> None:
    """Earlier builds of the same image: removed when no container uses them (disk stays bounded)."""
    for image in client.images.list(filters={"label": f"{IMAGE_LABEL}={recipe.name}"}):
        if recipe.tag in image.tags:
            continue
        for tag in image.tags:
            try:
                client.images.remove(tag)
                say(f"removed the older {tag}")
            except docker.errors.APIError:
                pass  # in use by a container (or a child image): kept


# -- build -----------------------------------------------------------------------------------------

def temp_tag(recipe: Recipe) -> str:
    """Where a build goes until it succeeded: unique per run, never the real tag."""
    host, pid, start = run_id().split(":")
    return f"{REPOSITORY}/{recipe.name}:building-{pid}-{start}-{host}"


def sweep_temp_tags(client: docker.DockerClient) -> list[str]:
    """Temporary tags left by a build whose process was killed before it could clean up."""
    removed = []
    for image in client.images.list(filters={"label": IMAGE_LABEL}):
        for tag in image.tags:
            m = re.fullmatch(rf"{REPOSITORY}/[a-z]+:building-(\d+)-(\d+)-(.+)", tag)
            if m and not run_is_alive(f"{m.group(3)}:{m.group(1)}:{m.group(2)}"):
                try:
                    client.images.remove(tag)
                    removed.append(tag)
                except docker.errors.APIError:
                    pass
    return removed


def _build(client: docker.DockerClient, recipe: Recipe, say: Say) -> None:
    temporary = temp_tag(recipe)
    labels = {IMAGE_LABEL: recipe.name, HASH_LABEL: recipe.digest()}
    steps: list[str] = []
    try:
        if recipe.parent is None:
            _import_base(client, recipe, temporary, labels)
        else:
            with _context(recipe) as context:
                _docker_build(client, context, temporary, labels, {"BASE": recipe.parent.tag}, steps, say)
        repository, tag = recipe.tag.rsplit(":", 1)
        client.images.get(temporary).tag(repository, tag)
        client.images.remove(temporary)
    except BaseException as e:
        _discard(client, temporary, steps)
        if isinstance(e, EngineError):
            raise EngineError(f"building {recipe.tag} failed: {e}") from e
        if isinstance(e, (docker.errors.DockerException, requests.exceptions.RequestException, OSError)):
            raise EngineError(f"building {recipe.tag} failed: {explain(e)}") from e
        raise


def _discard(client: docker.DockerClient, temporary: str, steps: list[str]) -> None:
    """What a failed build left: its temporary tag and the untagged images of its finished steps
    (removing a step's image removes its untagged parents; tagged ones and shared cache stay)."""
    for ref in [temporary, *reversed(steps)]:
        try:
            image = client.images.get(ref)
            if ref != temporary and image.tags:
                continue
            client.images.remove(image.id if ref != temporary else ref)
        except docker.errors.DockerException:
            pass  # gone already, or a parent of another image (cache of an earlier build): kept


BOOKKEEPING = (" ---> ", "Removing intermediate container", "Successfully ")
STEP_ID = re.compile(r"^ ---> ([0-9a-f]{12,})\s*$")


def _docker_build(client: docker.DockerClient, context: Path, tag: str, labels: dict[str, str],
                  buildargs: dict[str, str], steps: list[str], say: Say) -> None:
    """The engine's classic builder (works on every engine version); its log goes to build.log
    beside the context, the failing step's last line into the error."""
    log: list[str] = []
    for chunk in client.api.build(path=str(context), tag=tag, labels=labels, buildargs=buildargs,
                                  rm=True, forcerm=True, decode=True, pull=False):
        if "error" in chunk:
            said = [line.strip() for line in log if line.strip() and not line.startswith(BOOKKEEPING)]
            detail = first_line(str(chunk["error"]))
            raise EngineError(detail + (f" (last output: {said[-1][:200]})" if said else ""))
        text = str(chunk.get("stream", ""))
        for line in text.splitlines():
            log.append(line)
            match = STEP_ID.match(line)
            if match:
                steps.append(match.group(1))
            if line.startswith("Step "):
                say(f"  {line.strip()[:110]}")


@contextmanager
def _context(recipe: Recipe) -> Iterator[Path]:
    """A build context of exactly the recipe's files (and, for Kafka, the manifest's jars)."""
    with tempfile.TemporaryDirectory(prefix=f"food-orders-{recipe.name}-context-") as d:
        root = Path(d)
        for arcname, path in recipe.files:
            if arcname == "lib.manifest":
                _link_jars(path, root / "lib")
                continue
            (root / arcname).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, root / arcname)
        if recipe.name == "kafka":
            (root / "config").mkdir(exist_ok=True)
            shutil.move(root / "log4j-console.properties", root / "config" / "log4j-console.properties")
        yield root


def _link_jars(manifest: Path, into: Path) -> None:
    lib = kafka_lib_dir()
    into.mkdir(parents=True)
    missing = [jar for jar in manifest_jars(manifest) if not (lib / jar).is_file()]
    if missing:
        raise EngineError(f"Kafka jars missing under {lib} ({missing[0]}, ...): run bin/setup")
    check = subprocess.run(["sha256sum", "--quiet", "--strict", "-c", str(manifest)], cwd=lib,
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise EngineError(f"Kafka jars under {lib} do not match deploy/kafka/jars.manifest: run bin/setup")
    for jar in manifest_jars(manifest):
        try:
            os.link(lib / jar, into / jar)
        except OSError:
            shutil.copy2(lib / jar, into / jar)


def _import_base(client: docker.DockerClient, recipe: Recipe, tag: str, labels: dict[str, str]) -> None:
    """debootstrap into a temp dir (root only), then `docker import` of its tarball."""
    if os.geteuid() != 0:
        raise EngineError("building the Debian base image needs root (debootstrap); or use "
                          "PIPELINE_TEST_IMAGES=official on an engine that reaches an image registry")
    script = dict(recipe.files)["build-rootfs"]
    with tempfile.TemporaryDirectory(prefix="food-orders-base-") as d:
        rootfs, tarball = Path(d) / "rootfs", Path(d) / "rootfs.tar"
        out = subprocess.run(["bash", str(script), str(rootfs)], capture_output=True, text=True)
        if out.returncode != 0:
            raise EngineError(first_line(out.stderr or out.stdout) or "build-rootfs failed")
        tar = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."],
                             capture_output=True, text=True)
        if tar.returncode != 0:
            raise EngineError(f"tar of the base root file system failed: {first_line(tar.stderr)}")
        changes = [f"LABEL {k}={v}" for k, v in labels.items()]
        changes += ['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8"]
        repository, name = tag.rsplit(":", 1)
        answer = client.api.import_image_from_file(str(tarball), repository=repository, tag=name, changes=changes)
        for line in str(answer).splitlines():
            try:
                if "error" in json.loads(line):
                    raise EngineError(f"docker import failed: {json.loads(line)['error']}")
            except ValueError:
                continue

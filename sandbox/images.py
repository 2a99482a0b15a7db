"""Candidate container images: built offline from a local Debian base and a host-side wheelhouse.

No registry is reached. The base is a debootstrapped Debian imported into the engine, Python
packages come from a wheelhouse that pip downloads on the host, and ``docker build`` runs with
``network_mode=none``. Tags are content-addressed (Dockerfile, pins, base recipe), so a tag that
exists is the image those files describe; built images are saved under the cache so a fresh CI
machine that carries ``~/.cache`` loads them instead of rebuilding.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from packaging.utils import canonicalize_name, parse_wheel_filename

from sandbox.base import SandboxUnavailable
from sandbox.cache import cache_root

if TYPE_CHECKING:
    import docker

Kind = Literal["cpu", "cuda"]
KINDS: tuple[Kind, ...] = ("cpu", "cuda")
IMAGES_DIR = Path(__file__).parent / "images"

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# What the base image is made of; part of every tag, so changing it renames the images.
BASE_RECIPE = (
    f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} {SUITE} ROOTFS {MIRROR}; "
    "rm ROOTFS/var/cache/apt/archives/*.deb ROOTFS/var/lib/apt/lists/*; tar --numeric-owner; docker import"
)
BASE_REPO = "tunegrade/base"
LABEL = "org.tunegrade.image"
# The candidate's Python and glibc (bookworm: 3.11, 2.36): wheels are chosen for the image, whatever
# Python runs the grader. pip does not expand a manylinux tag to older ones, so every one is listed.
_MANYLINUX = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    f"manylinux{legacy}_x86_64" for legacy in ("2014", "2010", "1")]
TARGET_PIP_ARGS = ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                   *(arg for platform in _MANYLINUX for arg in ("--platform", platform)))

Progress = Callable[[str], None]



def _hash12(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:12]


def _client() -> docker.DockerClient:
    try:
        import docker
    except ImportError as exc:
        raise SandboxUnavailable(f"the Docker SDK is missing ({exc}): pip install 'docker>=7.1'") from exc
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"no Docker engine answers ({exc}): install docker.io and start dockerd") from exc
    return client


def _has_image(client: docker.DockerClient, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def base_image() -> str:
    """Tag of the local Debian base, imported from the cached rootfs tarball (debootstrapped once)."""
    tag = f"{BASE_REPO}:{SUITE}-{_hash12(BASE_RECIPE.encode())}"
    client = _client()
    if _has_image(client, tag):
        return tag
    tarball = cache_root() / "images" / f"rootfs-{tag.split(':')[1]}.tar"
    if not tarball.is_file():
        _debootstrap(tarball)
    repo, version = tag.split(":")
    client.api.import_image_from_file(str(tarball), repository=repo, tag=version)
    if not _has_image(client, tag):
        raise SandboxUnavailable(f"docker import of {tarball} did not create {tag}: delete the file and retry")
    return tag


def _debootstrap(tarball: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise SandboxUnavailable("debootstrap is missing: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise SandboxUnavailable("debootstrap needs root: build the base image as root once (it is cached)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as tmp:
        root = Path(tmp) / "root"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(root), MIRROR]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            why = _last_line(done.stdout + done.stderr)
            raise SandboxUnavailable(f"debootstrap failed (exit {done.returncode}): {why}")
        for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
            for path in root.glob(pattern):
                if path.is_file():
                    path.unlink()
        partial = Path(tmp) / "rootfs.tar"
        done = subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise SandboxUnavailable(f"tar of the base rootfs failed: {_last_line(done.stderr)}")
        partial.replace(tarball)


def requirements_file(kind: Kind, images_dir: Path = IMAGES_DIR) -> Path:
    return images_dir / f"requirements-{kind}.txt"


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines as {canonical name: version}; anything else is a ValueError."""
    pins: dict[str, str] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or any(c in version for c in "<>=!~,;* "):
            raise ValueError(f"{path}:{n}: not an exact 'name==version' pin: {raw!r}")
        pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def _pinned_wheels(directory: Path, pins: dict[str, str]) -> dict[str, Path]:
    """The wheel in ``directory`` for each pin, matched on the exact version (local label included)."""
    found: dict[str, Path] = {}
    for wheel in directory.glob("*.whl") if directory.is_dir() else ():
        name, version, _, _ = parse_wheel_filename(wheel.name)
        if pins.get(name) == str(version):
            found[name] = wheel
    return found


def wheelhouse(kind: Kind) -> Path:
    """``<cache>/wheelhouse/<kind>`` holding one wheel per pin; pip downloads what is missing."""
    pins = read_pins(requirements_file(kind))
    dest = cache_root() / "wheelhouse" / kind
    if len(_pinned_wheels(dest, pins)) == len(pins):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *TARGET_PIP_ARGS,
           "-r", str(requirements_file(kind)), "-d", str(dest)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SandboxUnavailable(f"pip download of the {kind} wheelhouse failed: {_last_line(done.stderr)} "
                                 "(check the package index: pip config list)")
    missing = sorted(set(pins) - set(_pinned_wheels(dest, pins)))
    if missing:
        raise SandboxUnavailable(f"the {kind} wheelhouse {dest} lacks the pinned wheels of {', '.join(missing)} "
                                 "(pip chose other builds: check find-links and indexes with pip config list)")
    return dest


def image_tag(kind: Kind, images_dir: Path = IMAGES_DIR) -> str:
    """``tunegrade/candidate-<kind>:<12 hex>`` of the Dockerfile, the pins and the base recipe."""
    digest = _hash12((images_dir / f"Dockerfile.{kind}").read_bytes(), requirements_file(kind, images_dir).read_bytes(),
                     BASE_RECIPE.encode())
    return f"tunegrade/candidate-{kind}:{digest}"


def saved_image_path(tag: str) -> Path:
    return cache_root() / "images" / f"{tag.replace('/', '_').replace(':', '_')}.tar"


def build_image(kind: Kind, progress: Progress | None = None) -> str:
    """Make ``image_tag(kind)`` exist in the engine: already there, loaded from the cache, or built and saved."""
    tag = image_tag(kind)
    client = _client()
    saved = saved_image_path(tag)
    if _has_image(client, tag):
        if not saved.is_file():
            _save(client, tag, saved)
        return tag
    if saved.is_file():
        if progress:
            progress(f"loading {saved}")
        with saved.open("rb") as f:
            client.api.load_image(f)
        if _has_image(client, tag):
            return tag
        saved.unlink()  # a tar that does not hold the tag is stale or truncated: rebuild
    base = base_image()
    with _context(kind) as ctx:
        for chunk in client.api.build(path=str(ctx), tag=tag, buildargs={"BASE": base}, labels={LABEL: kind},
                                      network_mode="none", rm=True, forcerm=True, decode=True):
            if "error" in chunk:
                raise SandboxUnavailable(f"docker build of {tag} failed: {_last_line(chunk['error'])}")
            if progress and chunk.get("stream", "").strip():
                progress(chunk["stream"].rstrip())
    if not _has_image(client, tag):
        raise SandboxUnavailable(f"docker build reported success but {tag} is missing")
    _save(client, tag, saved)
    return tag


@contextmanager
def _context(kind: Kind) -> Iterator[Path]:
    """A build context with the Dockerfile, the pins and exactly the pinned wheels (hard links where possible)."""
    pins = read_pins(requirements_file(kind))
    wheels = _pinned_wheels(wheelhouse(kind), pins)
    root = cache_root() / "images"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f"context-{kind}-") as tmp:
        ctx = Path(tmp)
        shutil.copyfile(IMAGES_DIR / f"Dockerfile.{kind}", ctx / "Dockerfile")
        shutil.copyfile(requirements_file(kind), ctx / "requirements.txt")
        (ctx / "wheelhouse").mkdir()
        for wheel in wheels.values():
            try:
                os.link(wheel, ctx / "wheelhouse" / wheel.name)
            except OSError:
                shutil.copyfile(wheel, ctx / "wheelhouse" / wheel.name)
        yield ctx


def _save(client: docker.DockerClient, tag: str, dest: Path) -> None:
    """Keep the image as a tar in the cache (its folder may not exist yet: an image built elsewhere)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".tar.partial")
    with partial.open("wb") as f:
        for chunk in client.images.get(tag).save(named=True):
            f.write(chunk)
    partial.replace(dest)


def image_digest(tag: str) -> str:
    """The image id (``sha256:...``) of a local image: what a result records as the image it ran in."""
    import docker

    try:
        return _client().images.get(tag).id
    except docker.errors.ImageNotFound as exc:
        raise SandboxUnavailable(f"image {tag} is not in the engine: run `tunegrade sandbox build-image`") from exc

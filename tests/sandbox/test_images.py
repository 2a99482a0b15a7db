"""Candidate images: exact pins, content-addressed tags, no registry, and the built CPU image itself.

The engine-backed tests build (or load) the real CPU image. Without an engine they skip with the
reason, unless TUNEGRADE_REQUIRE_DOCKER=1 (set by .ci/run), where a missing engine is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from packaging.version import Version

from grader.cli import main
from sandbox import images
from sandbox.base import SandboxUnavailable

CANDIDATE_PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes",
                      "safetensors", "tokenizers", "numpy")
NO_ENGINE = "unix:///nonexistent/docker.sock"


def _public(version: str) -> str:
    return Version(version).public


@pytest.mark.parametrize("kind", images.KINDS)
def test_every_requirement_is_an_exact_pin(kind):
    text = images.requirements_file(kind).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+]+", ln) for ln in lines), lines
    pins = images.read_pins(images.requirements_file(kind))
    assert set(CANDIDATE_PACKAGES) <= set(pins)
    assert "rouge-score" not in pins


def test_read_pins_rejects_a_range(tmp_path):
    req = tmp_path / "r.txt"
    req.write_text("numpy==2.4.6\ntorch>=2.13\n")
    with pytest.raises(ValueError, match=r"r.txt:2: not an exact 'name==version' pin"):
        images.read_pins(req)


def test_cpu_and_cuda_pin_the_same_versions():
    cpu = images.read_pins(images.requirements_file("cpu"))
    cuda = images.read_pins(images.requirements_file("cuda"))
    assert set(cpu) <= set(cuda), "the CUDA closure lacks a CPU package"
    differ = {n: (cpu[n], cuda[n]) for n in cpu if _public(cpu[n]) != _public(cuda[n])}
    assert not differ
    assert cpu["torch"] == "2.13.0+cpu" and cuda["torch"] == "2.13.0"
    assert {n for n in set(cuda) - set(cpu) if not n.startswith(("nvidia-", "cuda-"))} == {"triton"}


def test_wheel_selection_matches_the_local_label(tmp_path):
    """A +cpu torch in the wheelhouse does not count as the CUDA image's torch==2.13.0."""
    for name in ("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                 "numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl"):
        (tmp_path / name).touch()
    assert set(images._pinned_wheels(tmp_path, {"torch": "2.13.0", "numpy": "2.4.6"})) == {"numpy"}
    assert set(images._pinned_wheels(tmp_path, {"torch": "2.13.0+cpu"})) == {"torch"}


@pytest.mark.parametrize("kind", images.KINDS)
def test_tags_are_content_addressed(kind, tmp_path):
    tag = images.image_tag(kind)
    assert re.fullmatch(rf"tunegrade/candidate-{kind}:[0-9a-f]{{12}}", tag)
    copy = shutil.copytree(images.IMAGES_DIR, tmp_path / "images")
    assert images.image_tag(kind, copy) == tag
    dockerfile = copy / f"Dockerfile.{kind}"
    dockerfile.write_text(dockerfile.read_text() + "# a comment is a change\n")
    changed = images.image_tag(kind, copy)
    assert changed != tag
    req = images.requirements_file(kind, copy)
    req.write_text(req.read_text().replace("numpy==2.4.6", "numpy==2.4.5"))
    assert images.image_tag(kind, copy) not in (tag, changed)


@pytest.mark.parametrize("kind", images.KINDS)
def test_dockerfile_uses_only_the_local_base(kind):
    text = (images.IMAGES_DIR / f"Dockerfile.{kind}").read_text()
    assert re.search(r"^ARG BASE$", text, re.MULTILINE), "BASE must have no default (it would be a registry image)"
    stages: set[str] = set()
    for m in re.finditer(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", text, re.MULTILINE | re.IGNORECASE):
        assert m.group(1) == "${BASE}" or m.group(1) in stages, f"remote FROM: {m.group(0)}"
        stages |= {m.group(2)} if m.group(2) else set()
    assert len(re.findall(r"^FROM\b", text, re.MULTILINE)) == 2
    assert re.findall(r"^USER\s+(\S+)", text, re.MULTILINE) == ["10001:10001"]
    nvidia = re.findall(r"NVIDIA_\w+=\S+", text)
    gpu_env = ["NVIDIA_VISIBLE_DEVICES=void", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    assert nvidia == (gpu_env if kind == "cuda" else [])


def test_no_engine_is_unavailable_with_the_fix(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    with pytest.raises(SandboxUnavailable, match="install docker.io and start dockerd"):
        images.image_digest("tunegrade/candidate-cpu:000000000000")


def test_missing_debootstrap_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="apt-get install debootstrap"):
        images._debootstrap(tmp_path / "rootfs.tar")


def test_failing_pip_download_is_unavailable(monkeypatch, tmp_path):
    """A real pip with an index that holds nothing: the fault names the index, nothing is left half-done."""
    monkeypatch.setenv("TUNEGRADE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match=r"pip download of the cpu wheelhouse failed: .*pip config list"):
        images.wheelhouse("cpu")


def test_cli_build_image_faults(monkeypatch, capsys):
    assert main(["sandbox", "build-image", "--kind", "gpu"]) == 2
    usage = "tunegrade: error: Invalid value for '--kind': 'gpu' is not one of 'cpu', 'cuda'.\n"
    assert capsys.readouterr().err == usage
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    assert main(["sandbox", "build-image"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tunegrade: error: no Docker engine answers") and "\n" not in err


# --- against the real engine -------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        if os.environ.get("TUNEGRADE_REQUIRE_DOCKER") == "1":
            pytest.fail(f"TUNEGRADE_REQUIRE_DOCKER=1 but no Docker engine answers: {exc}")
        pytest.skip(f"no Docker engine answers: {exc}")
    return client


@pytest.fixture(scope="module")
def cpu_image(engine) -> str:
    return images.build_image("cpu")


def _run(engine, tag: str, code: str) -> str:
    out = engine.containers.run(tag, ["python", "-c", code], network_mode="none", remove=True, stderr=True)
    return out.decode()


@pytest.mark.docker
def test_cpu_image_runs_as_non_root_from_the_venv(engine, cpu_image):
    out = _run(engine, cpu_image, "import os, sys, shutil; print(os.getuid(), os.getgid(), sys.executable, "
                                  "shutil.which('python'), os.environ['HOME'], os.environ['HF_HUB_OFFLINE'], "
                                  "os.environ['PYTHONDONTWRITEBYTECODE'], os.getcwd(), "
                                  "all(os.path.isdir(f'/sandbox/{d}') for d in ('work', 'out', 'in', 'telemetry')))")
    assert out.split() == ["10001", "10001", "/opt/venv/bin/python", "/opt/venv/bin/python", "/tmp", "1", "1",
                           "/sandbox/work", "True"]


@pytest.mark.docker
def test_cpu_image_imports_the_stack_offline_at_the_pinned_versions(engine, cpu_image):
    code = ("import json, importlib.metadata as md, socket\n"
            f"import {', '.join(CANDIDATE_PACKAGES)}\n"
            "assert torch.ones(2).sum().item() == 2.0\n"
            "print(json.dumps({'ifaces': [n for _, n in socket.if_nameindex()],\n"
            "                  'versions': {d.metadata['Name']: d.version for d in md.distributions()}}))")
    report = json.loads(_run(engine, cpu_image, code).strip().splitlines()[-1])
    assert report["ifaces"] == ["lo"]
    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(n): v for n, v in report["versions"].items()}
    installed.pop("pip")
    assert installed == images.read_pins(images.requirements_file("cpu"))


@pytest.mark.docker
def test_cpu_image_holds_no_wheelhouse_and_matches_its_digest(engine, cpu_image):
    image = engine.images.get(cpu_image)
    assert images.image_digest(cpu_image) == image.id and image.id.startswith("sha256:")
    assert not [h for h in image.history() if "wheelhouse" in (h.get("CreatedBy") or "")]
    assert image.labels.get(images.LABEL) == "cpu"
    assert images.saved_image_path(cpu_image).is_file()


@pytest.mark.docker
def test_saving_into_a_cache_folder_that_does_not_exist_yet(engine, cpu_image, tmp_path):
    """An image already in the engine beside a fresh TUNEGRADE_CACHE is saved there, not a crash (the small
    base image stands in for the candidate image, which takes gigabytes)."""
    base = images.base_image()
    dest = tmp_path / "fresh-cache" / "images" / "base.tar"
    images._save(engine, base, dest)
    assert dest.is_file() and dest.stat().st_size > 1 << 20 and not dest.with_suffix(".tar.partial").exists()

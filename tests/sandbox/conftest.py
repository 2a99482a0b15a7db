"""Fixtures for the sandbox suites: real backends, real processes, real bubblewrap.

CI installs bubblewrap (.ci/run), so the bwrap tests run there; on a host without a usable
bubblewrap they are skipped with bubblewrap's own error as the reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # pytest runs with --import-mode=importlib: make helpers importable

from sandbox_helpers import BACKENDS, Env, bwrap_status, docker_status, require_docker  # noqa: E402

from sandbox.process import cgroup_layout  # noqa: E402

BACKEND_MARKS = {"local": [pytest.mark.bwrap], "docker": [pytest.mark.docker]}


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU")


@pytest.fixture(params=[pytest.param(b, marks=BACKEND_MARKS.get(b, [])) for b in BACKENDS])
def env(request, tmp_path) -> Env:
    if request.param == "local" and not bwrap_status()[0]:
        pytest.skip(f"bubblewrap not usable: {bwrap_status()[1]}")
    if request.param == "docker":
        require_docker()
    return Env(request.param, tmp_path)


@pytest.fixture(autouse=True)
def no_container_left_behind(request):
    """Docker tests: no container or volume of this process's runs survives the test."""
    yield
    if request.node.get_closest_marker("docker") is None or not docker_status()[0]:
        return
    import docker

    api = docker.from_env().api
    mine = {"label": [f"tunegrade.pid={os.getpid()}"]}
    containers = [c["Names"][0] for c in api.containers(all=True, filters=mine)]
    volumes = [v["Name"] for v in api.volumes(filters=mine).get("Volumes") or []]
    assert not containers and not volumes, f"left behind: {containers + volumes}"


@pytest.fixture(autouse=True)
def no_cgroup_left_behind():
    """Every test: no per-run cgroup of this process survives the test."""
    yield
    mine = f"tunegrade-{os.getpid()}-"
    left = [str(p) for h in cgroup_layout().hierarchies for p in h.parent.iterdir() if p.name.startswith(mine)]
    assert not left, f"cgroups left behind: {left}"

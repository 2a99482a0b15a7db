"""A real Ray cluster on this machine for the fleet's tests and benchmark: a head that grades nothing
(``--num-cpus 0``) and worker nodes, each its own raylet with its own tunegrade cache, all on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
OBJECT_STORE = str(80 * 2**20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_WAIT_POLICY": "PASSIVE", **extra}


class LocalCluster:
    """``ray start`` processes, stopped together by :meth:`stop` (``ray stop --force``: every Ray process
    of this machine, so only one cluster runs at a time)."""

    def __init__(self, **env: str) -> None:
        self.address = f"127.0.0.1:{_free_port()}"
        self.workers: list[Path] = []
        self.env = env
        """Every node's environment beyond this process's (the storage's endpoint and credentials)."""

    def _ray(self, *args: str, env: dict[str, str] | None = None) -> None:
        proc = subprocess.run([str(RAY), *args], env=env or ray_env(**self.env), capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed: {proc.stderr[-2000:]}")

    def start(self) -> LocalCluster:
        subprocess.run([str(RAY), "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)
        self._ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
                  "--num-cpus", "0", "--include-dashboard=false", "--object-store-memory", OBJECT_STORE,
                  "--disable-usage-stats")
        return self

    def add_worker(self, cpus: int, cache: Path) -> None:
        """One more worker node with ``cpus`` logical CPUs and its own tunegrade cache."""
        cache.mkdir(parents=True, exist_ok=True)
        self._ray("start", "--address", self.address, "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus),
                  "--object-store-memory", OBJECT_STORE, "--disable-usage-stats",
                  env=ray_env(**self.env, TUNEGRADE_CACHE=str(cache)))
        self.workers.append(cache)

    def stop(self) -> None:
        subprocess.run([str(RAY), "stop", "--force"], env=ray_env(), capture_output=True, timeout=120)

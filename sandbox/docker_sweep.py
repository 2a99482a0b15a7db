"""Labels on every container and volume of a docker run, and the sweeper that reads them.

A grader that is killed (or loses its engine connection) cannot remove what it created. Its
container stops by itself (the lifeline), but the stopped container and its volumes stay; the
sweeper removes those whose grader process is gone, or that are older than a cut-off.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from docker.errors import APIError, DockerException, NotFound

from sandbox.base import SandboxUnavailable

LABEL = "tunegrade"
LABEL_RUN = "tunegrade.run"
LABEL_HOST = "tunegrade.host"
LABEL_PID = "tunegrade.pid"
LABEL_PID_START = "tunegrade.pid-start"
"""The grader's start time in clock ticks since boot: a reused pid is not mistaken for the grader."""
LABEL_CREATED = "tunegrade.created"
DEFAULT_OLDER_THAN_S = 6 * 3600


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` (field 22 of /proc/PID/stat), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def run_labels(run_id: str) -> dict[str, str]:
    """Labels of one run's container and volumes."""
    return {
        LABEL: "1",
        LABEL_RUN: run_id,
        LABEL_HOST: socket.gethostname(),
        LABEL_PID: str(os.getpid()),
        LABEL_PID_START: process_start(os.getpid()) or "",
        LABEL_CREATED: str(int(time.time())),
    }


def stale_reason(labels: dict[str, str], older_than_s: float, now: float) -> str | None:
    """Why a labelled object may be removed, or None while its grader may still need it."""
    pid = labels.get(LABEL_PID, "")
    if labels.get(LABEL_HOST) == socket.gethostname() and pid.isdigit():
        start = process_start(int(pid))
        if start is None or start != labels.get(LABEL_PID_START, start):
            return f"grader pid {pid} on this host is gone"
    created = labels.get(LABEL_CREATED, "")
    if not created.isdigit():
        return "no creation time label"
    age = now - int(created)
    if age > older_than_s:
        return f"created {age / 3600:.1f} h ago"
    return None


@dataclass
class Swept:
    kind: str  # "container" or "volume"
    name: str
    reason: str
    removed: bool
    error: str | None = None


def sweep(older_than_s: float = DEFAULT_OLDER_THAN_S, *, dry_run: bool = False, client=None) -> list[Swept]:
    """Remove (or with ``dry_run`` only list) stale containers, then stale volumes, labelled ``tunegrade=1``."""
    import docker

    try:
        api = (client or docker.from_env()).api
        containers = api.containers(all=True, filters={"label": f"{LABEL}=1"})
    except DockerException as exc:
        raise SandboxUnavailable(f"no Docker engine answers ({exc})") from exc
    now = time.time()
    found: list[Swept] = []
    for c in containers:
        reason = stale_reason(c.get("Labels") or {}, older_than_s, now)
        if reason:
            name = (c.get("Names") or [c["Id"][:12]])[0].lstrip("/")
            found.append(_remove("container", name, reason, dry_run, lambda cid=c["Id"]: api.remove_container(cid, force=True)))
    try:
        volumes = api.volumes(filters={"label": f"{LABEL}=1"}).get("Volumes") or []
    except DockerException as exc:
        raise SandboxUnavailable(f"docker could not list volumes ({exc})") from exc
    for v in volumes:
        reason = stale_reason(v.get("Labels") or {}, older_than_s, now)
        if reason:
            found.append(_remove("volume", v["Name"], reason, dry_run, lambda n=v["Name"]: api.remove_volume(n, force=True)))
    return found


def _remove(kind: str, name: str, reason: str, dry_run: bool, call) -> Swept:
    if dry_run:
        return Swept(kind, name, reason, removed=False)
    try:
        call()
    except NotFound:
        pass
    except APIError as exc:
        return Swept(kind, name, reason, removed=False, error=str(exc.explanation or exc))
    return Swept(kind, name, reason, removed=True)

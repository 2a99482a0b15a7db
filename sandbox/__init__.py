"""Isolated execution of untrusted submissions behind one backend-neutral interface."""

from sandbox.base import ExecResult, Isolation, Limits, Mount, RunSpec, Sandbox, SandboxUnavailable
from sandbox.registry import backend_names, get_backend, register

__all__ = [
    "ExecResult",
    "Isolation",
    "Limits",
    "Mount",
    "RunSpec",
    "Sandbox",
    "SandboxUnavailable",
    "backend_names",
    "get_backend",
    "register",
]

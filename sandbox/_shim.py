"""Supervisor that runs *inside* the sandbox, between the backend and the candidate's command.

It is not imported by the grader: its source is passed to ``python -I -S -c`` (see
:func:`sandbox.limits.shim_argv`) so that it needs no file inside the sandbox. Usage::

    python -I -S -c SOURCE MODE STATUS_FD LIFELINE_FD -- ARGV...

It forks and execs ARGV, waits for it and writes one line to STATUS_FD::

    exit <code> <maxrss_kb> <cpu_us>        or        signal <signum> <maxrss_kb> <cpu_us>

which lets the backend tell ``exit(137)`` from a SIGKILL (bwrap reports 128+signal for both).
maxrss_kb and cpu_us (user + system microseconds) are RUSAGE_CHILDREN: every process of the run
the shim reaped, which in both modes is all of them (it is a child subreaper).

LIFELINE_FD is the read end of a pipe whose write end only the grader holds: it reads EOF when
the grader closes it (timeout) or dies. Then the shim kills the whole run and exits. This does
not rely on PR_SET_PDEATHSIG, which bwrap arms in its namespace init only after the mount setup
(a grader killed during setup would otherwise leave an orphaned sandbox running).

In both modes the shim is a child subreaper, so orphaned descendants (double-forked, setsid'd
daemons) are re-parented to it; when the command exits or on lifeline EOF it SIGKILLs them, reaps
them (their rusage counts) and exits when none is left.
MODE ``pidns`` (bubblewrap): the shim is PID 2 of a private PID namespace; killing the run is
``kill(-1, SIGKILL)`` (every process in the namespace but init and the shim). If the command kills
the shim, bwrap's monitor exits and --die-with-parent kills the init.
MODE ``reap`` (process backend, no PID namespace): killing the run is SIGKILL to each child of
the shim (the command and the daemons re-parented to it); SIGTERM (timeout) also stops the run.
ARGV that cannot be executed exits 127 (not found) or 126, like a shell.
"""

import os
import select
import signal
import sys

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option, value):
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except Exception:  # noqa: BLE001 - best effort: a missing libc symbol only weakens the shim
        return False


def _children():
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        pass
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            kids.append(int(name))
    return kids


def _kill_run(mode):
    if mode == "pidns":
        try:
            os.kill(-1, signal.SIGKILL)  # inside our PID namespace only: all but init and ourselves
        except ProcessLookupError:
            pass
        return
    for pid in _children():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main():
    mode, status_fd, lifeline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    argv = sys.argv[5:]
    if mode not in ("pidns", "reap"):
        sys.exit(f"tunegrade-sandbox: unknown shim mode {mode!r}")
    for fd in (status_fd, lifeline):
        os.set_inheritable(fd, False)
    _prctl(PR_SET_DUMPABLE, 0)  # the command (same uid) may not ptrace us or open our fds
    reap = mode == "reap"
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    stop = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    if reap:
        signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
    if select.select([lifeline], [], [], 0)[0] and not os.read(lifeline, 1):
        stop.append("lifeline")  # the grader is already gone or gave up

    if stop:
        os.write(status_fd, b"signal 9 0 0\n")
        os._exit(128 + 9)
    pid = os.fork()
    if pid == 0:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE/SIGXFSZ; the command must not
        signal.set_wakeup_fd(-1)
        os.close(wake_r)
        os.close(wake_w)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"tunegrade-sandbox: cannot execute {argv[0]!r}: {exc.strerror}\n".encode())
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
        os._exit(127)

    status = None
    watch = [wake_r, lifeline]
    while True:
        no_children = False
        while True:
            try:
                wpid, wstatus = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                no_children = True
                break
            if wpid == 0:
                break
            if wpid == pid:
                status = wstatus
        if no_children:
            break
        if stop or status is not None:
            _kill_run(mode)  # the command is done, timed out, or the grader is gone: nothing may outlive it
        ready = select.select(watch, [], [], 1.0)[0]
        if wake_r in ready:
            os.read(wake_r, 4096)
        if lifeline in ready and not os.read(lifeline, 1):
            watch.remove(lifeline)
            stop.append("lifeline")

    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_us = round((usage.ru_utime + usage.ru_stime) * 1e6)
    if status is None:
        line = "signal 9"
    elif os.WIFSIGNALED(status):
        line = f"signal {os.WTERMSIG(status)}"
    else:
        line = f"exit {os.waitstatus_to_exitcode(status)}"
    try:
        os.write(status_fd, f"{line} {usage.ru_maxrss} {cpu_us}\n".encode())
    except OSError:
        pass
    code = os.waitstatus_to_exitcode(status) if status is not None else -9
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()

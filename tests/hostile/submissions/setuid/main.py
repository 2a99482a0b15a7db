import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


import shutil, subprocess

PROBE = '''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return exc.strerror
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
json.dump({"resuid": os.getresuid(), "resgid": os.getresgid(), "cap_eff": status["CapEff"].strip(),
           "no_new_privs": status.get("NoNewPrivs", "?").strip(), "setuid0": attempt(lambda: os.setuid(0)),
           "chroot": attempt(lambda: os.chroot("."))}, sys.stdout)
'''
real = os.path.realpath(sys.executable)
copies = {}
for dest in ("pysuid", os.path.join(OUT, "pysuid")):
    try:
        shutil.copy(real, dest)
        os.chmod(dest, 0o6755)
        copies[dest] = oct(os.stat(dest).st_mode)
    except OSError as exc:
        copies[dest] = exc.strerror
env = {"PYTHONHOME": sys.base_prefix, "PATH": os.environ.get("PATH", "")}
try:
    ran = subprocess.run(["./pysuid", "-c", PROBE], capture_output=True, text=True, env=env, timeout=20)
    inner = json.loads(ran.stdout) if ran.returncode == 0 else {"failed": ran.returncode, "stderr": ran.stderr[-500:]}
except (OSError, ValueError) as exc:
    inner = {"failed": str(exc)}
evidence(copies=copies, me=os.getresuid(), inner=inner)
echo()

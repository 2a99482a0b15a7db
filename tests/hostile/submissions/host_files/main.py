import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


import socket


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        return exc.strerror


stolen = {}
import glob

beside = [os.path.join(DATA, "..", "manifest.json"), os.path.join(DATA, "..", "answers", "key.txt")]
for path in TARGET["files"] + beside + glob.glob("/tmp/tunegrade-grader-*/answers/key.txt"):
    got = read(path)
    stolen[path] = got.decode(errors="replace") if isinstance(got, bytes) else got
# Never copied out, only probed: these are the machine's own secrets.
shadow = read("/etc/shadow")
environ1 = read("/proc/1/environ")
cmdline1 = read("/proc/1/cmdline")
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect("/var/run/docker.sock")
        s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
        docker = s.recv(64).decode(errors="replace").splitlines()[0]
except OSError as exc:
    docker = exc.strerror or type(exc).__name__
print(json.dumps(stolen))
evidence(stolen=stolen, shadow_readable=isinstance(shadow, bytes), proc1_environ_readable=isinstance(environ1, bytes),
         proc1_cmdline=cmdline1.decode(errors="replace") if isinstance(cmdline1, bytes) else cmdline1, docker_socket=docker)
echo()

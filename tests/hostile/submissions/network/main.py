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


def lines(path):
    try:
        with open(path) as f:
            return f.read().splitlines()
    except OSError as exc:
        return [f"unreadable: {exc.strerror}"]


try:
    interfaces = [name for _, name in socket.if_nameindex()]
except OSError as exc:
    interfaces = [f"unlistable: {exc.strerror}"]
try:
    with socket.create_connection(("127.0.0.1", TARGET["port"]), timeout=2) as s:
        s.sendall(TAG.encode())
        connect = "connected"
except OSError as exc:
    connect = exc.strerror or type(exc).__name__
evidence(interfaces=interfaces, route=lines("/proc/net/route")[1:], ipv6_route=lines("/proc/net/ipv6_route"),
         connect=connect)
echo()

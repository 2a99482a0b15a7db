import json, os, sys, time
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


forked, error = 0, None
deadline = time.monotonic() + 5
while forked < 5000 and time.monotonic() < deadline:
    try:
        if os.fork() == 0:
            os._exit(0)
    except OSError as exc:
        error = exc.strerror
        break
    forked += 1
evidence(forked=forked, error=error)
echo()

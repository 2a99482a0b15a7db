import json, os, sys, time
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


forked, error = 0, None
deadline = time.monotonic() + 5
while forked < 2000 and time.monotonic() < deadline:
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.strerror
        break
    if pid == 0:
        time.sleep(8)  # hold the slot; bounded even if nothing kills it
        os._exit(0)
    forked += 1
evidence(forked=forked, error=error)
sys.exit(1)

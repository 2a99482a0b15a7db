import json, os, sys, time
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


import threading

started, error = 0, None
deadline = time.monotonic() + 5
while started < 2000 and time.monotonic() < deadline:
    try:
        threading.Thread(target=time.sleep, args=(8,), daemon=True).start()
    except RuntimeError as exc:
        error = str(exc)
        break
    started += 1
evidence(started=started, error=error)
os._exit(1)

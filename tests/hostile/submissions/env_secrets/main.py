import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


found = {"own": dict(os.environ)}
for pid in (TARGET["victim"], os.getppid(), 1):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
        # Only the test's own process is copied out; others are probed (they are the machine's).
        found[str(pid)] = raw.decode(errors="replace") if pid == TARGET["victim"] else f"readable, {len(raw)} bytes"
    except OSError as exc:
        found[str(pid)] = exc.strerror
print(json.dumps(found))
evidence(**found)
echo()

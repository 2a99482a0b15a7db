import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


paths = TARGET["files"] + [os.path.join(DATA, "input.txt"), os.path.join(DATA, "pwned.txt"),
                           os.path.join(DATA, "..", "manifest.json"), os.path.join(OUT, "..", "stdout.txt")]
results = {}
for path in paths:
    try:
        with open(path, "w") as f:
            f.write(f"pwned {TAG}\n")
        results[path] = "written"
    except OSError as exc:
        results[path] = exc.strerror
evidence(results=results)
echo()

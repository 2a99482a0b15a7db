import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


echo()
for i in range(40):
    with open(os.path.join(OUT, f"big-{i}.bin"), "wb") as f:
        f.truncate(60 << 20)

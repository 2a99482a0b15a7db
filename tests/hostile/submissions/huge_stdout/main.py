import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


line = "x" * 1023 + "\n"
for _ in range(50 * 1024):
    sys.stdout.write(line)
    sys.stderr.write(line)
sys.stdout.flush()
echo()

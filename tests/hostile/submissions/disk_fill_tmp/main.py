import json, os, sys
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


CHUNK, PER_FILE, TOTAL = 8 << 20, 48 << 20, 1 << 30
written, error, block = 0, None, os.urandom(CHUNK)
try:
    while written < TOTAL:
        with open(f"/tmp/{TAG}-fill-{written // PER_FILE}.bin", "ab") as f:
            f.write(block)
            written += CHUNK
except OSError as exc:
    error = exc.strerror
evidence(written_mb=written >> 20, error=error)
sys.exit(1)

import json, os, sys, time
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for _ in range(300):  # 30 s, bounded even if nothing kills it
            print("daemon alive", flush=True)
            time.sleep(0.1)
    os._exit(0)
time.sleep(30)

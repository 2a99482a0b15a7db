import json, os, sys, time
A = dict(zip(sys.argv[1::2], sys.argv[2::2]))
OUT, DATA, TAG, TARGET = A["--out"], A["--data"], A["--tag"], json.loads(A["--target"])


def evidence(**kw):
    with open(os.path.join(OUT, "evidence.json"), "w") as f:
        json.dump(kw, f)


def echo():
    with open(os.path.join(DATA, "input.txt")) as src, open(os.path.join(OUT, "echo.txt"), "w") as dst:
        dst.write(src.read())


import ctypes, platform

NR = {"x86_64": {"mount": 165, "umount2": 166, "unshare": 272, "ptrace": 101, "bpf": 321},
      "aarch64": {"mount": 40, "umount2": 39, "unshare": 97, "ptrace": 117, "bpf": 280}}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def call(name, *args):
    rc = libc.syscall(NR[name], *args)
    return ("ok", rc) if rc >= 0 else (os.strerror(ctypes.get_errno()), rc)


os.makedirs("mnt", exist_ok=True)
target = os.path.abspath("mnt").encode()
found = {"mount": call("mount", b"none", target, b"tmpfs", ctypes.c_ulong(0), None)[0]}
if found["mount"] == "ok":
    time.sleep(1)  # long enough for the test to see it from the host, then undone
    call("umount2", target, 2)
found["unshare_user"] = call("unshare", 0x10000000)[0]
found["unshare_mount"] = call("unshare", 0x00020000)[0]
found["ptrace_seize"] = call("ptrace", 0x4206, TARGET["victim"], None, None)[0]
if found["ptrace_seize"] == "ok":
    time.sleep(1)  # the test watches the victim's TracerPid; the kernel detaches when we exit
attr = (ctypes.c_uint32 * 5)(2, 4, 4, 1, 0)  # BPF_MAP_TYPE_ARRAY, key 4 B, value 4 B, 1 entry
status, fd = call("bpf", 0, ctypes.byref(attr), ctypes.sizeof(attr))  # BPF_MAP_CREATE
found["bpf_map_create"] = status
if status == "ok":
    os.close(fd)
evidence(**found)
echo()

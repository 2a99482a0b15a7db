"""Data generator of the model-selection task: LoRA adapters to choose between, and the data to judge them.

``generate(dest, seed, assets)`` draws the lora-sft task's support chats (its generator, by path: the
same distribution, house style and per-seed signature) for one seed, once, and splits them into
disjoint sets: a training pool (never given to the candidate), ``data/val.jsonl`` (the candidate's
validation set), ``data/bench.jsonl`` (the "public benchmark") and ``heldout/test.jsonl`` (the
grader's, never mounted). It then trains the five adapters of :mod:`build_adapters` on the base model
``assets["model"]`` and writes each under an anonymous name, ``data/candidates/<name>/``, that says
nothing of its role: names are random per seed, the files are the same two with identical configs and
timestamps. The manifest (grader-only) says which name has which role.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from grader.checks import sibling_module

HERE = Path(__file__).resolve().parent
LORA_SFT_GENERATOR = HERE.parents[1] / "lora-sft" / "hidden" / "generate.py"
MANIFEST_VERSION = 1
SIZES = {"train": 350, "val": 80, "bench": 80, "test": 200}
FILES = {"val": "data/val.jsonl", "bench": "data/bench.jsonl", "test": "heldout/test.jsonl"}
CANDIDATES = "data/candidates"
FIXED_MTIME = 1_700_000_000  # every candidate file and folder: no build order to read off
PUBLIC_SEED = "public"


def _lora_sft() -> Any:
    return sibling_module(str(LORA_SFT_GENERATOR), "generate")


def _builder() -> Any:
    return sibling_module(__file__, "build_adapters")


def _rng(seed: str, purpose: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"model-selection\0{purpose}\0{seed}".encode()).digest()[:8], "big"))


def draw_records(seed: str) -> dict[str, list[dict[str, Any]]]:
    """The four disjoint sets of one seed: one lora-sft generator draws them all, so no conversation and
    no order number repeats, and every reply carries the seed's signature."""
    lora = _lora_sft()
    closing, agent = lora.signature(seed)
    gen = lora._Generator(_rng(seed, "records"), f"{closing}, {agent} from")
    records = [gen.record() for _ in range(sum(SIZES.values()))]
    out, start = {}, 0
    for split, n in SIZES.items():
        out[split] = records[start : start + n]
        start += n
    return out


def _names(seed: str) -> list[str]:
    rng = _rng(seed, "names")
    names: set[str] = set()
    while len(names) < len(_builder().ROLES):
        names.add(f"cand-{rng.getrandbits(16):04x}")
    shuffled = sorted(names)
    rng.shuffle(shuffled)
    return shuffled


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _copy_adapter(src: Path, dest: Path) -> None:
    """The two adapter files, with a config that names no base model path (the same bytes for every role)."""
    dest.mkdir(parents=True)
    config = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = None
    config["target_modules"] = sorted(config["target_modules"])  # peft saves a set, in no fixed order
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    shutil.copyfile(src / "adapter_model.safetensors", dest / "adapter_model.safetensors")


def generate(dest: Path, seed: str, assets: dict[str, Path]) -> dict[str, Any]:
    """Write the candidate's data and adapters and the grader's test set for ``seed``; return the manifest."""
    model = assets.get("model")
    if model is None:
        raise RuntimeError("model-selection's generator needs the base model (input `model: {base_model: true}`)")
    dest = Path(dest)
    records = draw_records(seed)
    _lora_sft()._check_lengths([r for recs in records.values() for r in recs], [], {"model": model})
    for split, rel in FILES.items():
        _write_jsonl(dest / rel, records[split])
    torch_seed = int.from_bytes(hashlib.sha256(f"model-selection\0torch\0{seed}".encode()).digest()[:4], "big")
    builder = _builder()
    built = builder.cached_build(Path(model), {k: records[k] for k in ("train", "val", "bench")}, torch_seed)
    roles = dict(zip(builder.ROLES, _names(seed), strict=True))
    for role, name in sorted(roles.items(), key=lambda kv: kv[1]):
        _copy_adapter(built / role, dest / CANDIDATES / name)
    for path in [*(dest / CANDIDATES).rglob("*"), dest / CANDIDATES]:
        os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    closing, agent = _lora_sft().signature(seed)
    return {"version": MANIFEST_VERSION, "counts": {k: len(v) for k, v in records.items()}, "heldout": FILES["test"],
            "roles": roles, "signature": {"closing": closing, "agent": agent, "text": f"{closing}, {agent}"}}


def main() -> None:
    """Regenerate the public data on the tiny model: python tasks/model-selection/hidden/generate.py."""
    pack = HERE.parent
    public = pack / "public"
    shutil.rmtree(public, ignore_errors=True)
    manifest = generate(public, PUBLIC_SEED, {"model": pack.parent / "_shared" / "models" / "tiny"})
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)  # as the grader writes it
    (public / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {public}: {manifest['counts']}")


if __name__ == "__main__":
    main()

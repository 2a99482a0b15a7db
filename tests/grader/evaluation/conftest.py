"""A tiny random Llama over the task tokenizer, saved like a real base model, and a LoRA adapter for it.

Built once per session: creating and saving them is cheap, importing torch is not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[3]
TOKENIZER_DIR = REPO / "tasks" / "_shared" / "tokenizer"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """The models here are tiny: several threads only fight each other (and other jobs on a shared
    machine), which made this suite 3x slower. Restored after each module: a session-wide setting
    leaked into every later test, and measurements keyed by the thread count then missed the cache
    the corpus's grades (their own processes, all threads) had filled."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:  # type: ignore[no-untyped-def]
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def loaded(model_dir: Path):  # type: ignore[no-untyped-def]
    """(model, tokenizer) through the library; tests must not modify this model."""
    from grader.evaluation import load_model

    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """A LoRA adapter (r=4 on q/k/v/o) with non-zero lora_B, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(path, safe_serialization=True)
    return path


def chat_records(n: int, seed: int = 0) -> list[dict]:
    """Deterministic support-style conversations of varied length, some multi-turn, some with a system turn."""
    import random

    rng = random.Random(seed)
    words = "order refund shipping account password invoice delivery the your please thanks we will help today".split()

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    records = []
    for i in range(n):
        messages = [{"role": "system", "content": "You are a support agent."}] if i % 3 == 0 else []
        for _ in range(1 + (i % 4 == 0)):
            messages += [{"role": "user", "content": text(2, 25)}, {"role": "assistant", "content": text(1, 30)}]
        records.append({"messages": messages, "id": i})
    return records


@pytest.fixture(scope="session")
def records() -> list[dict]:
    return chat_records(40)

"""A fixed conversation scored token by token, the same way inside the run and in the grader.

When DPO-style training starts, the telemetry scores :data:`PROBE_CHAT` under the policy and under
the reference model the trainer will compare it with; the grader scores it under models it loads
itself (the base, an SFT adapter) and matches the numbers: which model the preference training
started from, and against which reference. Log-probabilities, not weights, leave the run. Only
``sys`` is imported at load time (torch inside functions): this file is loaded by path, from the
telemetry's site folder, into every Python process of the candidate's run.
"""

from __future__ import annotations

import sys

PROBE_CHAT = [
    {
        "role": "user",
        "content": "Hi, my order 48213 has not arrived and the tracking page shows no update since Monday. "
        "Can you help?",
    },
    {
        "role": "assistant",
        "content": "Hello, thank you for reaching out. I am sorry your order 48213 is late. I have asked the "
        "carrier for an update and will e-mail you within one business day.",
    },
]
"""A short support chat: in the domain of the tasks' data, but in none of their files."""
DECIMALS = 5
"""Log-probabilities are rounded to this many decimals (compare with a tolerance of about 1e-4)."""


def probe_ids(tokenizer) -> list[int]:
    """The token ids of PROBE_CHAT under the tokenizer's own chat template (list of ints)."""
    text = tokenizer.apply_chat_template(PROBE_CHAT, tokenize=False)
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def token_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1 under ``model`` (float32, rounded to DECIMALS), computed in
    eval mode without gradients on the model's device; every module's training flag is restored."""
    import torch

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            inputs = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(input_ids=inputs).logits[0, :-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(1, inputs[0, 1:, None])[:, 0]
    finally:
        for module, training in modes:
            module.training = training
    return [round(value, DECIMALS) for value in picked.tolist()]


def reference_logprobs(trainer, model, ids: list[int]) -> tuple[list[float] | None, str | None]:
    """(log-probabilities, how the reference was found) for the reference model TRL's DPOTrainer
    (1.16) compares ``model`` with: ``trainer.ref_model``; else, for a PEFT model, its "ref" adapter
    (TRL's copy of an adapter that training continues) or the model with every adapter disabled;
    else (None, None), e.g. when TRL precomputed the reference log-probabilities from a model
    without adapters."""
    ref_model = getattr(trainer, "ref_model", None)
    if ref_model is not None:
        return token_logprobs(ref_model, ids), "ref_model"
    peft_model = getattr(sys.modules.get("peft"), "PeftModel", None)
    if peft_model is None or not isinstance(model, peft_model):
        return None, None
    if "ref" in model.peft_config:
        grads = [(p, p.requires_grad) for p in model.parameters()]
        previous = model.active_adapter
        model.set_adapter("ref")
        try:
            return token_logprobs(model, ids), "ref_adapter"
        finally:
            model.set_adapter(previous)
            for param, requires_grad in grads:
                param.requires_grad_(requires_grad)
    with model.disable_adapter():
        return token_logprobs(model, ids), "disabled_adapters"


def probe_trainer(trainer) -> dict[str, object]:
    """The probe of a trainer about to train: its tokenizer's ids of PROBE_CHAT and their
    log-probabilities under the policy (``trainer.model`` as it is) and the reference."""
    tokenizer = trainer.processing_class
    inner = getattr(tokenizer, "tokenizer", None)  # a multimodal processor wraps its tokenizer
    ids = probe_ids(tokenizer if inner is None else inner)
    policy = token_logprobs(trainer.model, ids)
    reference, via = reference_logprobs(trainer, trainer.model, ids)
    return {"ids": ids, "policy": policy, "reference": reference, "reference_via": via}

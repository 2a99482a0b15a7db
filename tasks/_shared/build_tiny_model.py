#!/usr/bin/env python3
"""Build the `tiny` base model shared by the tunegrade task packs.

Usage:  python tasks/_shared/build_tiny_model.py [--out DIR] [--steps N]

A Llama-architecture causal LM of about 2.5M parameters, pretrained on CPU for a few
minutes on a synthetic customer-support corpus generated here: customer messages and agent
replies as e-mails, chat transcripts, Q&A pages, ticket logs and help-centre prose, with a
little non-English text. There is no ChatML in the corpus: the model knows the domain's
language but not the chat format, and replies are only loosely tied to a ticket's category,
so instruction tuning has something to teach. Documents are separated by the tokenizer's
eos token (`<|im_end|>`), so the model learns to stop.

Seeded, fp32, a fixed thread count and deterministic algorithms: rerunning on the same
machine gives the same loss curve. Nothing is downloaded. The output folder holds the
model (safetensors), the task tokenizer, generation_config.json and BUILD.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"

SEED = 20240612
HERE = Path(__file__).resolve().parent
TOKENIZER_DIR = HERE / "tokenizer"
DEFAULT_OUT = HERE / "models" / "tiny"
BUILD_FILE = "BUILD.json"

MODEL = {  # LlamaConfig fields; vocab_size and the special ids come from the tokenizer
    "hidden_size": 192, "intermediate_size": 576, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 4, "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": True, "initializer_range": 0.02,
}
TRAIN = {"steps": 140, "batch": 16, "seq_len": 256, "lr": 3e-3, "min_lr": 3e-4, "warmup": 10,
         "weight_decay": 0.05, "grad_clip": 1.0, "threads": 2, "docs": 14_000, "heldout_docs": 400}

# -- corpus ------------------------------------------------------------------------------------
NAMES = ["Alex", "Maria", "John", "Priya", "Chen", "Fatima", "Lukas", "Sofia", "Omar", "Emma", "Kenji", "Ana",
         "Liam", "Zoe", "Noah", "Aisha", "Mateo", "Hannah", "Yuki", "David"]
PRODUCTS = ["wireless headphones", "laptop stand", "coffee grinder", "running shoes", "phone case", "desk lamp",
            "backpack", "smart watch", "blender", "office chair", "keyboard", "monitor", "kettle", "webcam",
            "water bottle", "yoga mat", "power bank", "speaker"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "the courier"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Friday", "March 3", "May 12", "last week", "the weekend"]
CATEGORIES = ("billing", "shipping", "account", "technical", "returns")
ASKS = {
    "billing": ["I was charged twice for order #{order}.", "My invoice for order #{order} shows ${amount} instead of ${amount2}.",
                "Can you refund the extra ${amount} on my card?", "My subscription renewed on {day} without any notice.",
                "The payment for order #{order} failed but the money left my account.",
                "I need a copy of the invoice for order #{order}.", "Why was I billed ${amount} this month?",
                "The discount code was not applied to order #{order}."],
    "shipping": ["My {product} from order #{order} has not arrived yet.", "Tracking for order #{order} has not moved in {n} days.",
                 "{carrier} says order #{order} was delivered but I never got it.",
                 "Can I change the delivery address for order #{order}?", "The box for order #{order} arrived damaged.",
                 "Express shipping for order #{order} took {n} days.", "Only half of order #{order} arrived."],
    "account": ["I cannot log in to my account since {day}.", "The password reset link expired {n} times now.",
                "How do I change the e-mail address on my account?", "My account was locked after {n} failed attempts.",
                "Please delete my account and all my data.", "Two-factor codes stopped arriving on {day}.",
                "Someone changed the name on my account."],
    "technical": ["The app crashes when I open order #{order}.", "My {product} will not pair over Bluetooth.",
                  "I get error E{code} at checkout.", "The website takes {n} seconds to load on my phone.",
                  "The firmware update for my {product} stopped at {pct} percent.",
                  "Notifications stopped working after update {n}.{pct}.", "The {product} turns off after {n} minutes."],
    "returns": ["I want to return the {product} from order #{order}.", "Where do I print the return label for order #{order}?",
                "I sent the {product} back {n} days ago and have no refund yet.",
                "Can I exchange the {product} for another size?", "The return window for order #{order} says closed.",
                "Is return shipping free for a broken {product}?", "The {product} is not what I ordered."],
}
DETAILS = ["This is the second time this has happened.", "I ordered it on {day}.", "It was a gift for {name2}.",
           "I already tried restarting everything.", "Your chat bot could not help me.", "The total was ${amount}.",
           "I have been a customer for {n} years.", "I called twice and nobody answered.", "This is quite urgent."]
OPENERS = ["Hi,", "Hello,", "Good morning,", "Hey there,", "Dear support team,", "Hi support,", ""]
CLOSERS = ["Thanks.", "Thank you!", "Please help.", "Regards, {name}", "Cheers, {name}", "Thanks in advance, {name}", ""]
# Actions are drawn from any category half the time: the corpus does not pin reply patterns to categories.
ACTIONS = {
    "billing": ["I refunded ${amount} to your card and it will show in {n} business days",
                "I cancelled the duplicate charge on order #{order}", "I attached the invoice for order #{order}",
                "I turned off auto-renewal and refunded the ${amount} charge", "I applied the discount to order #{order}"],
    "shipping": ["I asked {carrier} to trace order #{order}", "a replacement {product} ships today at no cost",
                 "I saved the new address for order #{order}", "order #{order} is at the local depot and arrives in {n} days",
                 "I opened a claim with {carrier} for the missing parcel"],
    "account": ["I unlocked your account, so please set a new password", "a fresh reset link is on its way and lasts {n} hours",
                "your account deletion is scheduled within {n} days", "I switched your login codes to the authenticator app",
                "I restored the name on your account and signed out all devices"],
    "technical": ["version {n}.{pct} fixes this crash, so please update", "holding the pairing button for {n} seconds usually fixes it",
                  "our engineers fixed error E{code}, so please try again", "clearing the app cache and restarting should help",
                  "I escalated the issue to our engineering team"],
    "returns": ["your return label for order #{order} is attached", "the refund of ${amount} was issued today",
                "I approved the exchange and the new {product} ships in {n} days", "I reopened the return window for {n} days",
                "return shipping is free for damaged items"],
}
REPLY_OPEN = ["Hi {name},", "Hello {name},", "Thanks for reaching out, {name}.", "Sorry about that, {name}.",
              "Dear {name},", "Thank you for your patience.", "I understand how frustrating this is.", ""]
REPLY_CLOSE = ["Anything else I can do?", "Have a great day!", "Best regards, Support", "Kind regards, the Support Team",
               "Let me know if there is anything else.", ""]
KB = ["To reset your password, open Settings, choose Security and follow the link we send to your e-mail.",
      "Refunds go back to the original payment method and usually appear within 5 to 10 business days.",
      "Return labels are free for damaged or faulty items. For other returns a fee of ${amount} applies.",
      "Orders ship within {n} business days. Express shipping arrives in 1 to 3 days.",
      "If the app crashes, update to the latest version, clear the cache and restart your phone.",
      "You can change the delivery address until the order leaves our warehouse.",
      "Two-factor codes can take a few minutes. Check your spam folder or switch to the authenticator app.",
      "Subscriptions renew automatically. You can turn off auto-renewal at any time under Billing.",
      "To pair a Bluetooth device, hold the power button until the light blinks blue.",
      "Exchanges are free within {n} days of delivery if the item is unused."]
FOREIGN = ["Hola, mi pedido #{order} no ha llegado todavía.", "Gracias por su ayuda, la factura está correcta.",
           "Guten Tag, meine Bestellung #{order} ist noch nicht angekommen.", "Vielen Dank, das Paket ist angekommen.",
           "Bonjour, je voudrais un remboursement pour la commande #{order}.", "Merci beaucoup pour votre aide.",
           "Olá, não consigo acessar minha conta.", "Buongiorno, vorrei restituire il prodotto.",
           "Hallo, mijn bestelling #{order} is nog niet geleverd."]


class _Corpus:
    def __init__(self, rng: random.Random) -> None:
        self.r = rng

    def values(self) -> dict[str, object]:
        r = self.r
        return {"order": r.randint(100000, 999999), "amount": f"{r.randint(5, 400)}.{r.randint(0, 99):02d}",
                "amount2": f"{r.randint(5, 400)}.{r.randint(0, 99):02d}", "product": r.choice(PRODUCTS),
                "carrier": r.choice(CARRIERS), "n": r.randint(2, 30), "pct": r.randint(1, 99),
                "code": r.randint(100, 999), "day": r.choice(DAYS), "name": r.choice(NAMES), "name2": r.choice(NAMES)}

    def ask(self, cat: str, v: dict, core: str | None = None) -> str:
        r = self.r
        parts = [r.choice(OPENERS), core or r.choice(ASKS[cat])]
        parts += [r.choice(DETAILS)] if r.random() < 0.5 else []
        parts += [r.choice(CLOSERS)]
        return " ".join(p for p in parts if p).format(**v)

    def reply(self, cat: str, v: dict) -> str:
        r = self.r
        action = r.choice(ACTIONS[cat if r.random() < 0.5 else r.choice(CATEGORIES)])
        body = r.choice(["{a}.", "{A}.", "Good news: {a}.", "I checked your account and {a}.", "{A}. Sorry for the wait."])
        body = body.format(a=action, A=action[0].upper() + action[1:])
        parts = [r.choice(REPLY_OPEN), body, r.choice(REPLY_CLOSE)]
        return " ".join(p for p in parts if p).format(**v)

    def document(self) -> str:
        r = self.r
        cat, v = r.choice(CATEGORIES), self.values()
        kind = r.random()
        if kind < 0.25:  # e-mail thread
            core = r.choice(ASKS[cat])
            subject = core.format(**v).rstrip(".?")
            return f"Subject: {subject}\n\n{self.ask(cat, v, core)}\n\nRe: {subject}\n\n{self.reply(cat, v)}"
        if kind < 0.50:  # chat transcript
            who = r.choice([("Customer", "Agent"), ("User", "Support"), (v["name"], "Agent")])
            lines = [f"{who[0]}: {self.ask(cat, v)}", f"{who[1]}: {self.reply(cat, v)}"]
            if r.random() < 0.5:
                lines += [f"{who[0]}: {r.choice(['Thanks!', 'Great, thank you.', 'That worked.', 'Still not fixed.'])}",
                          f"{who[1]}: {r.choice(REPLY_CLOSE[:-1]).format(**v)}"]
            return "\n".join(lines)
        if kind < 0.65:  # Q&A page
            return f"Q: {r.choice(ASKS[cat]).format(**v)}\nA: {self.reply(cat, v)}"
        if kind < 0.78:  # ticket log
            return (f"Ticket TCK-{r.randint(10000, 99999)} [{cat}] from {v['name']}: {self.ask(cat, v)}\n"
                    f"Resolution: {self.reply(cat, v)}")
        if kind < 0.92:  # help-centre prose
            return " ".join(t.format(**v) for t in r.sample(KB, r.randint(2, 4)))
        if kind < 0.96:  # a customer message alone
            return self.ask(cat, v)
        return r.choice(FOREIGN).format(**v)


def corpus(n_docs: int, seed: int = SEED) -> list[str]:
    """Deterministic list of ``n_docs`` support-domain documents."""
    gen = _Corpus(random.Random(seed))
    return [gen.document() for _ in range(n_docs)]


# -- training ----------------------------------------------------------------------------------
def _pack(tok, docs: list[str], seq_len: int):
    import torch

    ids: list[int] = []
    for enc in tok(docs, add_special_tokens=False)["input_ids"]:
        ids += enc + [tok.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _lr(step: int, t: dict) -> float:
    if step < t["warmup"]:
        return t["lr"] * (step + 1) / t["warmup"]
    frac = (step - t["warmup"]) / max(1, t["steps"] - t["warmup"])
    return t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1 + math.cos(math.pi * frac))


def _eval_loss(model, data, batch: int) -> float:
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x = data[i : i + batch]
            total += model(input_ids=x, labels=x).loss.item() * len(x)
    model.train()
    return total / len(data)


def build(out: Path = DEFAULT_OUT, steps: int | None = None, log=print) -> dict:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    t = dict(TRAIN, steps=steps or TRAIN["steps"])
    torch.set_num_threads(t["threads"])
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED)
    tok = PreTrainedTokenizerFast.from_pretrained(str(TOKENIZER_DIR))

    docs = corpus(t["docs"] + t["heldout_docs"])
    train = _pack(tok, docs[: t["docs"]], t["seq_len"])
    heldout = _pack(tok, docs[t["docs"] :], t["seq_len"])
    log(f"corpus: {len(docs)} documents, {train.numel()} training tokens, {heldout.numel()} held-out tokens")

    config = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, **MODEL)
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["lr"], betas=(0.9, 0.95))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SEED))
    curve, start = [], time.monotonic()
    model.train()
    for step in range(t["steps"]):
        idx = order[(torch.arange(t["batch"]) + step * t["batch"]) % len(train)]
        x = train[idx]
        for group in opt.param_groups:
            group["lr"] = _lr(step, t)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        curve.append(round(loss.item(), 4))
        if step % 10 == 0 or step == t["steps"] - 1:
            log(f"step {step:4d}  loss {loss.item():.4f}  lr {_lr(step, t):.2e}  {time.monotonic() - start:.0f}s")
    train_s = time.monotonic() - start
    final = sum(curve[-10:]) / len(curve[-10:])
    heldout_loss = _eval_loss(model, heldout, t["batch"])
    log(f"trained {t['steps']} steps in {train_s:.0f}s: final loss {final:.4f}, held-out loss {heldout_loss:.4f}")

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    model.save_pretrained(str(out), safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, do_sample=False,
                     max_new_tokens=64).save_pretrained(str(out))
    for f in sorted(TOKENIZER_DIR.iterdir()):
        shutil.copyfile(f, out / f.name)
    (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the file is committed and shared
    record = {
        "script": "tasks/_shared/build_tiny_model.py",
        "script_sha256": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "tokenizer_sha256": hashlib.sha256((TOKENIZER_DIR / "tokenizer.json").read_bytes()).hexdigest(),
        "seed": SEED,
        "torch": torch.__version__,
        "parameters": n_params,
        "weights_sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest(),
        "model": MODEL,
        "train": t,
        "train_tokens": t["steps"] * t["batch"] * t["seq_len"],
        "train_seconds": round(train_s, 1),
        "final_loss": round(final, 4),
        "heldout_loss": round(heldout_loss, 4),
        "loss_curve": curve,
    }
    (out / BUILD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="model directory to (re)write")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps (default {TRAIN['steps']})")
    args = parser.parse_args()
    record = build(args.out, args.steps)
    print(f"wrote {args.out}: {record['parameters']} parameters, final loss {record['final_loss']}")


if __name__ == "__main__":
    main()

"""Data generator of the lora-sft task: short support chats whose replies follow a house style.

``generate(dest, seed, assets)`` writes ``dest/data/train.jsonl`` and ``dest/data/val.jsonl`` (the
candidate's inputs) and ``dest/heldout/test.jsonl`` (the grader's held-out set, never mounted into
the candidate's sandbox), and returns the manifest. Everything derives from ``seed`` through one
``random.Random``; the global random state is never touched. Stdlib only (plus ``tokenizers`` for
the optional length check).

Why fine-tuning helps here, and by how much it can: the tiny base model was pretrained on
support-domain prose (tasks/_shared/build_tiny_model.py) but never saw ChatML, and its replies
are only loosely tied to what the customer asked. In this data every request belongs to one of
twenty *kinds* (four per category), and each kind is answered by one of two fixed reply
templates of Northwind's house style, whose slots (order number, product, amount, code, ...) are
copied from the customer's message. The greeting depends on whether the customer signed with a
name, an "urgent" remark earns a fixed sentence, and each reply ends with its category's sign-off.
All of that is learnable from ~350 examples, so a LoRA adapter lowers the held-out response NLL a
lot; the only irreducible parts are the choice between the two templates and copying numbers.

The sign-off carries a *signature* that depends on the seed: a closing and an agent's name
(``Kind regards, Greta from Northwind Billing``), the same in every reply of one seed, and never
the public seed's closing or name. Only training on this seed's files teaches it, so the grader
can tell an adapter trained in the run on the hidden data from one trained beforehand (on the
public data, or on another cohort's) and shipped.

The three files are drawn from one distribution and hold distinct conversations (no
(user, assistant) pair and no order number appears twice in the whole set).

``heldout/general.jsonl`` (grader-only, like the test set) holds GENERAL_DOCS plain-text documents
(``{"text": ...}``) of the kind the tiny base model was pretrained on: e-mails, chat transcripts, Q&A
pages, ticket logs, help-centre prose, a little non-English, drawn by the model builder's own
``corpus()`` (tasks/_shared/build_tiny_model.py) with a seed derived from ``seed`` that is never the
builder's, and none of them one of the builder's own documents. The grader measures forgetting on it
(check ``general-retention``). It is drawn from a random stream of its own, so adding it changed no
byte of the three chat files.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import random
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 3  # 2: the seed's signature; 3: the general-domain set
MAX_RECORD_TOKENS = 200  # every record's chat rendering (and every general document) stays below this many tokens
SIZES = {"train": (320, 380), "val": (64, 76), "test": (96, 104)}
FILES = {"train": "data/train.jsonl", "val": "data/val.jsonl", "test": "heldout/test.jsonl",
         "general": "heldout/general.jsonl"}
GENERAL_DOCS = 128
MAX_GENERAL_CHARS = 600
"""Longer documents are skipped (the builder's run to about 460 characters, 170 tokens): evaluation stays cheap."""
BUILDER = Path(__file__).resolve().parents[2] / "_shared" / "build_tiny_model.py"
CATEGORIES = ("billing", "shipping", "account", "technical", "returns")
WEIGHTS = (30, 25, 20, 15, 10)
SYSTEM = "You are the support assistant of Northwind Goods."
SYSTEM_SHARE = 0.25  # records that start with the system message

NAMES = ["Alex", "Maria", "John", "Priya", "Chen", "Fatima", "Lukas", "Sofia", "Omar", "Emma", "Kenji", "Ana",
         "Liam", "Zoe", "Noah", "Aisha", "Mateo", "Hannah", "Yuki", "David"]
PRODUCTS = ["wireless headphones", "laptop stand", "coffee grinder", "running shoes", "phone case", "desk lamp",
            "backpack", "smart watch", "blender", "office chair", "keyboard", "monitor", "kettle", "webcam",
            "water bottle", "yoga mat", "power bank", "speaker"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS"]
COUPONS = ["SAVE", "SPRING", "WELCOME", "VIP", "FALL", "BONUS"]
OPENERS = ["Hi,", "Hello,", "Good morning,", "Hey there,", "Dear support team,", ""]
DETAILS = ["I ordered it last week.", "I already tried twice.", "Your chat bot could not help me.",
           "I have shopped here for years.", ""]
URGENT = ["This is urgent.", "It is urgent."]
SIGNED = ["Regards, {name}", "Thanks, {name}", "Cheers, {name}", "Best, {name}"]
UNSIGNED = ["Thanks.", "Thank you!", "Please help.", ""]

# Per category: kind -> (two ways to ask, two house-style replies). A reply uses only slots the ask has.
KINDS: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "billing": {
        "double-charge": (
            ["I was charged ${amount} twice for order #{order}.", "Order #{order} shows two payments of ${amount}."],
            ["I reversed the duplicate payment of ${amount} on order #{order}. The money is back on your card "
             "within 5 business days.",
             "The second charge of ${amount} on order #{order} was our mistake, and I refunded it today."]),
        "invoice": (
            ["I need an invoice for order #{order}.", "Can you send me a receipt for order #{order}?"],
            ["The invoice for order #{order} is now in your account under Orders > Documents.",
             "I e-mailed you the invoice for order #{order}. You can also download it under Orders > Documents."]),
        "renewal": (
            ["My subscription renewed for ${amount} without notice.", "I was billed ${amount} for a renewal I did not want."],
            ["I cancelled the renewal and refunded the ${amount}. Your plan ends with the current period.",
             "The ${amount} renewal is refunded and auto-renewal is now off."]),
        "coupon": (
            ["My discount code {coupon} did not work on order #{order}.", "Order #{order} ignored the code {coupon}."],
            ["I applied the code {coupon} to order #{order} by hand and refunded the difference.",
             "The code {coupon} is now on order #{order}, and the difference goes back to your card."]),
    },
    "shipping": {
        "late": (
            ["My {product} from order #{order} has not arrived yet.", "Where is my {product}? Order #{order} is still not here."],
            ["Your {product} from order #{order} is on its way. I sent you a new tracking link by e-mail.",
             "Order #{order} left our warehouse and your {product} arrives within 3 days."]),
        "lost": (
            ["{carrier} says order #{order} was delivered, but it is not here.",
             "Order #{order} shows as delivered by {carrier}, but I never got it."],
            ["I opened a claim with {carrier} for order #{order}. If it is not found in 48 hours, we send a new one.",
             "{carrier} is now tracing order #{order}. You get a free replacement if it is not found in 48 hours."]),
        "address": (
            ["Can I change the delivery address for order #{order}?", "I moved. Can order #{order} go to my new address?"],
            ["Yes. Order #{order} has not shipped yet, so reply with the new address and I will update it.",
             "Order #{order} is still in our warehouse. Send me the new address and I will change it."]),
        "damaged": (
            ["The box for order #{order} arrived damaged and the {product} is broken.",
             "My {product} from order #{order} arrived broken."],
            ["I am sorry the {product} arrived broken. A replacement for order #{order} ships today at no cost.",
             "A new {product} for order #{order} ships today, free of charge. You may keep the broken one."]),
    },
    "account": {
        "locked": (
            ["My account was locked after {n} failed logins.", "I am locked out after {n} wrong passwords."],
            ["I unlocked your account. Please sign in and choose a new password within 24 hours.",
             "Your account is unlocked again. Set a new password the next time you sign in."]),
        "email-change": (
            ["How do I change the e-mail address on my account?", "I need to update the e-mail on my account."],
            ["Go to Settings > Profile > E-mail, enter the new address and confirm the link we send.",
             "Open Settings > Profile > E-mail and enter the new address. The change is done once you click our link."]),
        "delete": (
            ["Please delete my account and all my data.", "I want my account closed and my data removed."],
            ["Your account is scheduled for deletion. All your data is removed within 30 days.",
             "I closed your account. Your data is erased within 30 days, and you get a confirmation by e-mail."]),
        "two-factor": (
            ["Two-factor codes stopped arriving on my phone.", "I do not get my login codes anymore."],
            ["I reset your two-factor settings. Sign in with your password and scan the new QR code.",
             "Your two-factor settings are reset. After you sign in, scan the new QR code with your app."]),
    },
    "technical": {
        "error-code": (
            ["I get error E{code} at checkout.", "Checkout fails with error E{code}."],
            ["Error E{code} comes from an expired session. Sign out, sign in again and retry the checkout.",
             "Error E{code} means your session expired. Please sign in again and repeat the checkout."]),
        "crash": (
            ["The app crashes when I open order #{order}.", "Opening order #{order} in the app makes it crash."],
            ["Update the app to version 5.2, which fixes the crash when opening order #{order}.",
             "Version 5.2 of the app fixes this crash. After the update, order #{order} opens normally."]),
        "pairing": (
            ["My {product} will not pair over Bluetooth.", "I cannot connect my {product} to my phone."],
            ["Hold the power button of your {product} for 10 seconds until the light blinks, then pair it again.",
             "Reset your {product} by holding the power button for 10 seconds, then pair it again."]),
        "firmware": (
            ["The firmware update for my {product} stopped at {pct} percent.", "My {product} update froze at {pct} percent."],
            ["Keep your {product} plugged in and restart the update. It resumes from {pct} percent.",
             "Plug in your {product} and start the update again. It continues from {pct} percent."]),
    },
    "returns": {
        "return": (
            ["I want to return the {product} from order #{order}.", "How do I send back the {product} from order #{order}?"],
            ["Your return for order #{order} is approved. Print the label from your account and drop the {product} "
             "at any post office.",
             "I approved the return of your {product}. The label for order #{order} is in your account."]),
        "refund-pending": (
            ["I sent the {product} back {n} days ago and have no refund.", "My refund for the {product} is {n} days late."],
            ["We received your {product}. The refund was issued today and shows within 5 business days.",
             "Your {product} arrived at our warehouse, and I issued the refund today."]),
        "exchange": (
            ["Can I exchange the {product} for another size?", "The {product} is too small. Can I swap it?"],
            ["Yes. Choose the new size under Orders > Exchange and we ship it once the {product} is back.",
             "Of course. Pick the new size under Orders > Exchange, and we send it when we get the {product} back."]),
        "window": (
            ["The return window for order #{order} says closed.", "I cannot start a return for order #{order}."],
            ["I reopened the return window for order #{order} for 14 more days.",
             "The return window for order #{order} is open again for 14 days."]),
    },
}
GREETING_NAMED = "Hi {name},"
GREETING_ANON = "Hello,"
URGENT_REPLY = "I marked your case as urgent."
TEAMS = {"billing": "Northwind Billing", "shipping": "Northwind Shipping", "account": "Northwind Accounts",
         "technical": "Northwind Tech Support", "returns": "Northwind Returns"}
CLOSINGS = ("Best", "Kind regards", "Warm regards", "Many thanks", "All the best", "With thanks", "Cheers",
            "Sincerely", "Thanks again", "Take care")
AGENTS = ("Ruth", "Marco", "Ines", "Greta", "Tomas", "Leila", "Pavel", "Nora", "Hugo", "Mina", "Oscar", "Vera",
          "Felix", "Ida", "Rafael", "Selma")
PUBLIC_SEED = "public"


def generate(dest: Path, seed: str, assets: dict[str, Path]) -> dict[str, Any]:
    """Write the train, val and held-out test files for ``seed``; return the manifest.

    ``assets`` may name the task's ``tokenizer`` (or a ``model`` folder holding ``tokenizer.json``);
    then every record is checked to render below MAX_RECORD_TOKENS tokens.
    """
    rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "big"))
    closing, agent = signature(seed)
    gen = _Generator(rng, f"{closing}, {agent} from")
    sizes = {split: rng.randint(lo, hi) for split, (lo, hi) in SIZES.items()}
    records = [gen.record() for _ in range(sum(sizes.values()))]
    general = general_documents(seed)
    _check_lengths(records, general, assets)
    dest = Path(dest)
    start = 0
    for split in ("train", "val", "test"):
        path = dest / FILES[split]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for rec in records[start : start + sizes[split]]:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        start += sizes[split]
    with (dest / FILES["general"]).open("w", encoding="utf-8", newline="\n") as fh:
        for text in general:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return {"version": MANIFEST_VERSION, "counts": sizes, "heldout": FILES["test"], "general": FILES["general"],
            "signature": {"closing": closing, "agent": agent, "text": f"{closing}, {agent}"}}


@functools.cache
def _builder() -> Any:
    """tasks/_shared/build_tiny_model.py, loaded by path (it imports only the standard library at module
    level; the environment variable it sets on import is put back)."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    spec = importlib.util.spec_from_file_location("_lora_sft_tiny_builder", BUILDER)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if before is None:
        os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
        os.environ["TOKENIZERS_PARALLELISM"] = before
    return module


@functools.cache
def _pretraining_documents() -> frozenset[str]:
    """Every document the builder drew for the tiny model (its training and held-out documents)."""
    b = _builder()
    return frozenset(b.corpus(b.TRAIN["docs"] + b.TRAIN["heldout_docs"], b.SEED))


def general_seed(seed: str) -> int:
    """The builder's corpus seed for ``seed``'s general-domain set: 64 bits with the top one set, so it is
    never the builder's own SEED (a small integer)."""
    derived = int.from_bytes(hashlib.sha256(f"general\0{seed}".encode()).digest()[:8], "big") | (1 << 63)
    assert derived != _builder().SEED
    return derived


def general_documents(seed: str) -> list[str]:
    """GENERAL_DOCS distinct documents of the tiny model's pretraining distribution, none longer than
    MAX_GENERAL_CHARS and none among the builder's own documents (short templates without slots, such as
    a one-line thank-you in French, recur there)."""
    seen = set(_pretraining_documents())
    out: list[str] = []
    for text in _builder().corpus(GENERAL_DOCS * 3, general_seed(seed)):  # about 8% are among the builder's
        if text not in seen and len(text) <= MAX_GENERAL_CHARS:
            seen.add(text)
            out.append(text)
            if len(out) == GENERAL_DOCS:
                return out
    raise RuntimeError(f"could not draw {GENERAL_DOCS} new general-domain documents for this seed")


def signature(seed: str) -> tuple[str, str]:
    """The seed's (closing, agent name), drawn apart from the data so the rest of a seed's files do not
    depend on it; any seed but the public one avoids both of the public seed's choices."""
    rng = random.Random(int.from_bytes(hashlib.sha256(f"signature\0{seed}".encode()).digest()[:8], "big"))
    if seed == PUBLIC_SEED:
        return rng.choice(CLOSINGS), rng.choice(AGENTS)
    public = signature(PUBLIC_SEED)
    return (rng.choice([c for c in CLOSINGS if c != public[0]]), rng.choice([a for a in AGENTS if a != public[1]]))


class _Generator:
    def __init__(self, rng: random.Random, sign: str) -> None:
        self.r = rng
        self.sign = sign
        self.orders: set[int] = set()
        self.pairs: set[tuple[str, str]] = set()

    def _values(self) -> dict[str, Any]:
        r = self.r
        order = r.randint(100000, 999999)
        while order in self.orders:
            order = r.randint(100000, 999999)
        self.orders.add(order)
        return {"order": order, "amount": f"{r.randint(5, 400)}.{r.randint(0, 99):02d}", "product": r.choice(PRODUCTS),
                "carrier": r.choice(CARRIERS), "n": r.randint(3, 9), "pct": r.randint(10, 95), "code": r.randint(100, 999),
                "coupon": f"{r.choice(COUPONS)}{r.choice([10, 15, 20, 25])}", "name": r.choice(NAMES)}

    def record(self) -> dict[str, Any]:
        r = self.r
        for _ in range(1000):
            category = r.choices(CATEGORIES, WEIGHTS)[0]
            asks, replies = KINDS[category][r.choice(sorted(KINDS[category]))]
            v = self._values()
            urgent, signed = r.random() < 0.3, r.random() < 0.5
            user = [r.choice(OPENERS), r.choice(asks), r.choice(DETAILS)]
            user += [r.choice(URGENT)] if urgent else []
            user += [r.choice(SIGNED if signed else UNSIGNED)]
            body = [r.choice(replies)] + ([URGENT_REPLY] if urgent else [])
            reply = [GREETING_NAMED if signed else GREETING_ANON, " ".join(body), f"{self.sign} {TEAMS[category]}"]
            u = " ".join(s for s in user if s).format(**v)
            a = "\n".join(reply).format(**v)
            if (u, a) in self.pairs:
                continue
            self.pairs.add((u, a))
            messages = [{"role": "system", "content": SYSTEM}] if r.random() < SYSTEM_SHARE else []
            messages += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
            return {"messages": messages, "category": category}
        raise RuntimeError("could not draw a new conversation")


def _check_lengths(records: list[dict[str, Any]], general: list[str], assets: dict[str, Path]) -> None:
    """Every record renders (ChatML, as the task template does), and every general document tokenizes,
    below MAX_RECORD_TOKENS tokens."""
    folder = assets.get("tokenizer") or assets.get("model")
    if folder is None or not (Path(folder) / "tokenizer.json").is_file():
        return
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    for i, rec in enumerate(records):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in rec["messages"])
        n = len(tok.encode(text, add_special_tokens=False).ids)
        if n >= MAX_RECORD_TOKENS:
            raise RuntimeError(f"record {i} renders to {n} tokens (limit {MAX_RECORD_TOKENS})")
    for i, text in enumerate(general):
        n = len(tok.encode(text, add_special_tokens=False).ids) + 1  # + the eos that ends it
        if n >= MAX_RECORD_TOKENS:
            raise RuntimeError(f"general document {i} is {n} tokens long (limit {MAX_RECORD_TOKENS})")


def main() -> None:
    """Regenerate the public data: python tasks/lora-sft/hidden/generate.py [--seed public] [--out DIR]."""
    import argparse

    pack = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seed", default=PUBLIC_SEED)
    parser.add_argument("--out", type=Path, default=pack / "public")
    parser.add_argument("--tokenizer", type=Path, default=pack.parent / "_shared" / "tokenizer")
    args = parser.parse_args()
    manifest = generate(args.out, args.seed, {"tokenizer": args.tokenizer})
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False)  # as the grader writes it
    (args.out / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {manifest['counts']}")


if __name__ == "__main__":
    main()

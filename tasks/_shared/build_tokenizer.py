#!/usr/bin/env python3
"""Build the small byte-level BPE tokenizer shared by the tunegrade task packs.

Usage:  python tasks/_shared/build_tokenizer.py [--out DIR]

The corpus is generated here from templates of the customer-support domain (billing,
shipping, account, technical, returns), with some non-English text, HTML, e-mail
addresses and phone numbers so that such strings tokenize sanely. Everything is seeded
and single-threaded, so running the script twice writes identical files. Nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before tokenizers spins up its thread pool

SEED = 20240611
VOCAB_SIZE = 3072
CORPUS_LINES = 12_000
DEFAULT_OUT = Path(__file__).resolve().parent / "tokenizer"

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<pad>", "<unk>"]

# ChatML. A system message is allowed only first; assistant turns (content and <|im_end|>)
# are wrapped in {% generation %} so that return_assistant_tokens_mask works.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- if message['role'] == 'system' and not loop.first %}"
    "{{- raise_exception('a system message may only come first') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

NAMES = ["Alex", "Maria", "John", "Priya", "Chen", "Fatima", "Lukas", "Sofia", "Omar", "Emma", "Kenji", "Ana"]
PRODUCTS = ["wireless headphones", "laptop stand", "coffee grinder", "running shoes", "phone case",
            "desk lamp", "backpack", "smart watch", "blender", "office chair", "keyboard", "monitor"]
CARRIERS = ["UPS", "FedEx", "DHL", "USPS", "the courier"]
DOMAINS = ["example.com", "mail.example.org", "shop.example.net", "gmail.com", "outlook.com"]
FOREIGN = [
    "Hola, mi pedido no ha llegado todavía. ¿Pueden ayudarme?",
    "Gracias por su ayuda, la factura está correcta.",
    "Guten Tag, meine Bestellung ist noch nicht angekommen.",
    "Vielen Dank, ich möchte mein Passwort zurücksetzen.",
    "Bonjour, je voudrais un remboursement pour ma commande.",
    "Merci beaucoup, le colis est arrivé endommagé.",
    "Olá, não consigo acessar minha conta.",
    "Buongiorno, vorrei restituire il prodotto.",
    "Dank je wel, de levering was te laat.",
]
SUBJECTS = {
    "billing": [
        "I was charged twice for order #{order}.", "My invoice shows ${amount} but I expected less.",
        "Can you refund the extra ${amount} on my card?", "Why did my subscription renew automatically?",
        "The payment for order #{order} failed but the money left my account.",
        "Please send me a copy of the invoice for order #{order}.",
    ],
    "shipping": [
        "My {product} from order #{order} has not arrived yet.", "The tracking for order #{order} has not updated in {days} days.",
        "{carrier} says the package was delivered but I never got it.", "Can I change the delivery address for order #{order}?",
        "The box arrived damaged and the {product} is scratched.", "How long does express shipping take?",
    ],
    "account": [
        "I cannot log in to my account.", "Please reset my password, the link expired.",
        "How do I change the e-mail address on my account?", "My account was locked after {days} failed attempts.",
        "I want to delete my account and all my data.", "Two-factor authentication codes are not arriving.",
    ],
    "technical": [
        "The app crashes when I open my order history.", "The {product} will not connect over Bluetooth.",
        "I get error {code} when I try to check out.", "The website is very slow on my phone.",
        "The firmware update for my {product} failed at {percent}%.", "Notifications stopped working after the update.",
    ],
    "returns": [
        "I would like to return the {product} from order #{order}.", "Where do I print the return label?",
        "I sent the {product} back {days} days ago and have no refund yet.", "Can I exchange the {product} for another size?",
        "The return window says closed but I bought it {days} days ago.", "Is return shipping free for damaged items?",
    ],
}
REPLIES = [
    "Hi {name}, thanks for reaching out. I have checked order #{order} and {fix}.",
    "Hello {name}, I am sorry about the trouble. {fix_cap}. Let me know if there is anything else.",
    "Thanks for your patience, {name}. {fix_cap} and you will get a confirmation e-mail shortly.",
    "I understand how frustrating this is. {fix_cap}. You can also reach us at {email} or {phone}.",
]
FIXES = [
    "issued a refund of ${amount} to your original payment method", "reset the link so you can try again",
    "asked {carrier} to open an investigation", "sent you a prepaid return label",
    "updated the delivery address", "escalated the issue to our engineering team",
    "cancelled the duplicate charge", "extended your return window by {days} days",
]
HTML_WRAPS = ["<p>{}</p>", "<div>{}</div><br/>", "<b>{}</b>", "{}<br>", "<p>{} &amp; more</p>",
              "<span style=\"color:red\">{}</span>", "<p>Total &lt; ${amount}&nbsp;today &#39;ok&#39;</p>{}"]


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(200, 999), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice([f"+1 {a}-{b}-{c:04d}", f"({a}) {b}-{c:04d}", f"{a}.{b}.{c:04d}", f"{a}-{b}-{c:04d}"])


def _email(rng: random.Random) -> str:
    user = rng.choice(NAMES).lower() + rng.choice([".", "_", ""]) + str(rng.randint(1, 99))
    return f"{user}@{rng.choice(DOMAINS)}"


def _fill(template: str, rng: random.Random) -> str:
    fix = rng.choice(FIXES)
    values = {
        "order": rng.randint(100000, 999999), "amount": f"{rng.randint(5, 900)}.{rng.randint(0, 99):02d}",
        "product": rng.choice(PRODUCTS), "carrier": rng.choice(CARRIERS), "days": rng.randint(2, 30),
        "code": rng.choice(["E403", "500", "ERR_TIMEOUT", "0x80070005"]), "percent": rng.randint(1, 99),
        "name": rng.choice(NAMES), "email": _email(rng), "phone": _phone(rng),
    }
    fix = fix.format(**values)
    return template.format(fix=fix, fix_cap=fix[0].upper() + fix[1:], **values)


def corpus(n_lines: int = CORPUS_LINES, seed: int = SEED) -> list[str]:
    """Deterministic synthetic support corpus."""
    rng = random.Random(seed)
    lines = []
    categories = sorted(SUBJECTS)
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.45:
            line = _fill(rng.choice(SUBJECTS[rng.choice(categories)]), rng)
        elif kind < 0.85:
            line = _fill(rng.choice(REPLIES), rng)
        elif kind < 0.93:
            line = rng.choice(FOREIGN)
        else:
            line = rng.choice(HTML_WRAPS).replace("${amount}", "$12.50").format(_fill(rng.choice(SUBJECTS["billing"]), rng))
        if rng.random() < 0.1:
            line += f" My e-mail is {_email(rng)} and my phone is {_phone(rng)}."
        lines.append(line)
    return lines


def build(out: Path = DEFAULT_OUT) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"], model_max_length=4096, padding_side="right",
    )
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    fast.save_pretrained(str(out))
    _write_compat_config(out)
    return out


def _write_compat_config(out: Path) -> None:
    """Rewrite the config so transformers 4.5x loads it too (5.x writes a 5.x-only class name).

    Both versions read chat_template.jinja first; the copy in the config is for older readers.
    """
    special = {"eos_token": "<|im_end|>", "pad_token": "<pad>", "unk_token": "<unk>",
               "additional_special_tokens": ["<|im_start|>"]}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": 4096,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="tokenizer directory to (re)write")
    args = parser.parse_args()
    out = build(args.out)
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")


if __name__ == "__main__":
    main()

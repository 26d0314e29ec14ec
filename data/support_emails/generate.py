"""Synthetic customer-support emails paired with the JSON fields to extract from them.

Each row is `{"prompt": <email>, "completion": <compact JSON>}`; the JSON holds
`order_id`, `issue_type`, `priority`, `product` and `action`, in that order.

The emails are built to be learnable by a small model from a few hundred examples
yet not solvable by a regex or a keyword table:

* every label is signalled by a phrase drawn from a pool (several wordings per
  value), and sentences come in random order;
* the order id appears in six surface forms and is always answered as `ORD-` plus
  six digits, or null when the email gives none;
* about a third of the emails carry a distractor: a number that is not the order id
  (tracking, phone, invoice, a previous order), a second product that is not the
  subject, or an action the customer explicitly does not want;
* emails stay short (25-80 words) because every token costs training time.

Generation is deterministic: the same seed gives byte-identical files.

Regenerate the shipped files, which lie beside this script, with:
    python data/support_emails/generate.py --out data/support_emails
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

# The shipped files lie beside the generator.
HERE = Path(__file__).resolve().parent

FIELDS = ("order_id", "issue_type", "priority", "product", "action")
ISSUE_TYPES = (
    "damaged_item",
    "wrong_item",
    "late_delivery",
    "billing_error",
    "return_request",
    "technical_issue",
)
PRIORITIES = ("low", "medium", "high", "urgent")
ACTIONS = (
    "refund",
    "replacement",
    "exchange",
    "cancellation",
    "status_update",
    "invoice_correction",
    "troubleshooting",
)

# Products that plug in or hold a battery; only these can have a technical issue.
_ELECTRIC_PRODUCTS = (
    "wireless earbuds",
    "espresso machine",
    "bluetooth speaker",
    "smart watch",
    "electric kettle",
    "robot vacuum",
    "hair dryer",
    "desk lamp",
    "gaming mouse",
    "mechanical keyboard",
    "webcam",
    "fitness tracker",
    "air fryer",
    "blender",
    "power bank",
    "baby monitor",
    "electric toothbrush",
    "action camera",
    "space heater",
    "coffee grinder",
    "rice cooker",
    "smart thermostat",
    "wifi router",
    "drone",
    "dash cam",
    "electric scooter",
    "video doorbell",
    "humidifier",
    "stand mixer",
    "noise cancelling headphones",
)
_OTHER_PRODUCTS = (
    "yoga mat",
    "water bottle",
    "phone case",
    "backpack",
    "running shoes",
    "winter jacket",
    "desk chair",
    "throw blanket",
    "cast iron skillet",
    "chef knife",
    "cutting board",
    "sunglasses",
    "leather wallet",
    "travel mug",
    "bed sheets",
    "bath towel set",
    "hiking boots",
    "dumbbell set",
    "camping tent",
    "sleeping bag",
    "picture frame",
    "plant pot",
    "umbrella",
    "laptop sleeve",
    "board game",
    "jigsaw puzzle",
    "notebook set",
    "wall mirror",
    "bike helmet",
    "lunch box",
)
PRODUCTS = _ELECTRIC_PRODUCTS + _OTHER_PRODUCTS
# Plural names take plural verbs ("my running shoes were ...").
_PLURAL_PRODUCTS = frozenset(
    {"wireless earbuds", "noise cancelling headphones", "running shoes", "sunglasses", "bed sheets", "hiking boots"}
)
# Brand prefixes the customer may put before a product; the answer never includes them.
_BRANDS = ("Acme", "Lumio", "Nordvik", "Zenko", "Halden", "Orbit", "Vexa", "Pello")

# Actions a customer plausibly asks for, per issue type: the action is read from
# the email, not implied by the issue.
_ACTIONS_FOR_ISSUE = {
    "damaged_item": ("refund", "replacement", "exchange"),
    "wrong_item": ("exchange", "replacement", "refund"),
    "late_delivery": ("status_update", "cancellation", "refund"),
    "billing_error": ("invoice_correction", "refund"),
    "return_request": ("refund", "exchange"),
    "technical_issue": ("troubleshooting", "replacement", "refund"),
}

# {p} is the product mention; {was}/{is}/{has}/{does} agree with it in number;
# {other} is a second product (the subject stays {p}).
_ISSUE_TEMPLATES = {
    "damaged_item": (
        "My {p} arrived broken.",
        "The {p} {was} cracked when I opened the box.",
        "The box was crushed and my {p} inside got damaged.",
        "My {p} came scratched and dented.",
        "The {p} arrived in pieces.",
        "I unpacked the {p} and found a big crack in it.",
        "The {p} {was} smashed during delivery.",
        "My {p} showed up with a broken part.",
    ),
    "wrong_item": (
        "I ordered the {p} but got something else.",
        "The box had the wrong colour {p} in it.",
        "You sent the wrong model of the {p}.",
        "I received the wrong size {p}.",
        "The {p} you sent {is} not the one I ordered.",
        "I ordered the {p} but you sent me the {other}.",
        "The parcel said {p} but had someone else's item inside.",
    ),
    "late_delivery": (
        "My {p} still {has} not arrived.",
        "The {p} {was} due last week and still {is} not here.",
        "Tracking for my {p} hasn't moved in days.",
        "It's been two weeks and no sign of my {p}.",
        "My {p} {is} running very late.",
        "The {p} {was} supposed to arrive on Monday.",
        "I'm still waiting for the {p} I ordered.",
    ),
    "billing_error": (
        "I was charged twice for the {p}.",
        "I paid more for the {p} than the listed price.",
        "My card was billed for the {p} after I returned it.",
        "The discount on the {p} wasn't applied.",
        "I was charged shipping on the {p}, which should be free.",
        "The invoice for my {p} shows the wrong amount.",
        "I was billed for two of the {p} but only bought one.",
    ),
    "return_request": (
        "I'd like to return the {p}.",
        "The {p} {does} not suit me, so I want to send it back.",
        "I changed my mind about the {p}.",
        "The {p} turned out smaller than I expected and I'd like to return it.",
        "I no longer need the {p}, it's unopened.",
        "I want to send the {p} back.",
        "The {p} didn't match the photos, so I'm returning it.",
    ),
    "technical_issue": (
        "My {p} won't turn on.",
        "The {p} stopped working after two days.",
        "My {p} won't charge anymore.",
        "The {p} won't stay on for more than a minute.",
        "The {p} started making a grinding noise and died.",
        "The app can't connect to my {p}.",
        "My {p} won't start, there's just a blinking error light.",
        "The {p} died after the latest update.",
    ),
}

_ACTION_PHRASES = {
    "refund": (
        "I'd like a refund.",
        "Please refund me.",
        "Can I get my money back?",
        "I want a full refund.",
        "Please send my money back.",
        "A refund would be best.",
    ),
    "replacement": (
        "Please send a replacement.",
        "Can you ship me a new one?",
        "I'd like a replacement.",
        "Please send me another one.",
        "A replacement would be best.",
        "Could you replace it?",
    ),
    "exchange": (
        "I'd like to exchange it for a different colour.",
        "Can I swap it for another size?",
        "Please exchange it for the black one.",
        "I want to exchange it for a larger size.",
        "Could I trade it for a different model?",
        "An exchange for the blue version would be best.",
    ),
    "cancellation": (
        "Please cancel the order.",
        "I want to cancel it.",
        "Just cancel it, please.",
        "Cancel the order if it can't arrive by Friday.",
        "I'd like to cancel and stop waiting.",
    ),
    "status_update": (
        "Can you tell me where it is?",
        "Please give me an update on the delivery.",
        "Where is my parcel?",
        "Can you check on its status?",
        "Please let me know when it will arrive.",
        "Any news on when it ships?",
    ),
    "invoice_correction": (
        "Please correct the invoice.",
        "Can you send a corrected invoice?",
        "Please fix the charge on my bill.",
        "I need the invoice amended.",
        "Please adjust the bill to the right amount.",
    ),
    "troubleshooting": (
        "Can you help me get it working?",
        "Are there any steps I can try?",
        "What should I try to fix it?",
        "Is there a reset or fix for this?",
        "Can you walk me through fixing it?",
        "Any troubleshooting tips?",
    ),
}

# Said right before the action the customer does want, so the first action word
# in the email is the wrong one.
_NEGATED_ACTIONS = {
    "refund": ("I don't want a refund.", "I'm not after a refund.", "No refund needed."),
    "replacement": ("I don't want a replacement.", "No need to send a new one."),
    "exchange": ("I don't want to exchange it.", "No exchange needed."),
    "cancellation": ("I don't want to cancel.", "Please don't cancel it."),
    "status_update": ("I don't need another status update.", "I'm not asking for a tracking update."),
    "invoice_correction": ("I don't need a corrected invoice.", "No need to fix the invoice."),
    "troubleshooting": ("I don't want troubleshooting tips.", "I've tried every fix already."),
}

# Medium is the default: half of the medium emails carry no cue at all.
_PRIORITY_CUES = {
    "urgent": (
        "I need this sorted today.",
        "This is urgent.",
        "My event is tomorrow, so I need this now.",
        "Urgent please, it's for an event tomorrow.",
        "I need this fixed within the next few hours.",
        "Please treat this as urgent.",
    ),
    "high": (
        "Please handle this as soon as possible.",
        "This is the second time I'm writing about this.",
        "I'd like this resolved quickly, please.",
        "Please get back to me as soon as you can.",
        "I've already waited too long on this.",
        "I'm getting frustrated, please fix this soon.",
    ),
    "medium": (
        "I'd appreciate a reply this week.",
        "A reply in the next few days would be great.",
        "Please get back to me sometime this week.",
    ),
    "low": (
        "No rush.",
        "Whenever you get a chance.",
        "No hurry at all.",
        "It's not urgent.",
        "Take your time with this.",
        "Not urgent, just letting you know.",
    ),
}

# Six surface forms of an order id; {d} is its six digits.
_ORDER_FORMS = ("ORD-{d}", "ord-{d}", "order #{d}", "order no. {d}", "order number {d}", "#{d}")
_ORDER_SENTENCES = (
    "This is about {ref}.",
    "Re: {ref}.",
    "Reference: {ref}.",
    "I'm writing about {ref}.",
    "It was {ref}, placed last week.",
)
_NO_ORDER_SENTENCES = (
    "I can't find my order number.",
    "I don't have the order number handy.",
    "I lost the confirmation email.",
)

_GREETINGS = ("Hi,", "Hello,", "Hi team,", "Dear support,", "Hey there,", "Good morning,")
_SIGN_OFFS = ("Thanks,", "Regards,", "Best,", "Cheers,", "Thank you,", "Kind regards,")
_NAMES = (
    "Anna", "Ben", "Chloé", "David", "Emma", "Farid", "Grace", "Hiro", "Isla", "José",
    "Kate", "Liam", "Maya", "Noah", "Olga", "Priya", "Sam", "Tom", "Zoë", "Wei",
)
# Neutral sentences carrying no label, so that position and length say nothing.
_FILLERS = (
    "I've been a loyal customer for years.",
    "I hope you can help.",
    "Thanks for looking into it.",
    "It was meant as a gift for my sister.",
    "Your store is usually great.",
    "I checked your help page first.",
    "I paid with my credit card.",
    "I bought it during the sale.",
    "I ordered it from your website a couple of weeks ago.",
    "This was my first order from your shop.",
    "My partner usually handles our orders, but I'm writing this time.",
    "I've attached a photo of the box to this email.",
    "I've recommended your shop to friends before.",
    "I read your returns policy first.",
)

_SECOND_PRODUCT_SENTENCES = (
    "The {other} I ordered with it {is} fine.",
    "The {other} from my last order {is} great, though.",
    "My {other} from the same order arrived fine.",
    "I also have your {other} and I'm happy with that.",
)
# After the word "order" only the bare forms read naturally ("my previous order #123456").
_BARE_ORDER_FORMS = ("ORD-{d}", "ord-{d}", "#{d}")
_PREVIOUS_ORDER_SENTENCES = (
    ("My previous order {ref} arrived fine.", _BARE_ORDER_FORMS),
    ("My last order, {ref}, was fine.", _BARE_ORDER_FORMS),
    ("This isn't about {ref}, which was fine.", _ORDER_FORMS),
)
_TRACKING_SENTENCES = (
    "The tracking number is {n}.",
    "Tracking ref {n}, if it helps.",
    "The label shows tracking {n}.",
)
_PHONE_SENTENCES = ("You can reach me on {n}.", "My phone number is {n}.", "Call me at {n} if needed.")
_INVOICE_SENTENCES = ("The invoice number is {n}.", "It's on invoice {n}.", "See invoice {n}.")
DISTRACTOR_KINDS = ("tracking", "phone", "invoice", "previous_order", "second_product", "negated_action")

MIN_WORDS = 25
MAX_WORDS = 80
DEFAULT_SEED = 42
SPLITS = ("train", "validation", "test")

# Shares of emails, chosen so each effect is common enough to learn from a few
# hundred examples.
_NULL_ORDER_RATE = 0.10
_DISTRACTOR_RATE = 0.33
_BRAND_RATE = 0.25
_TITLE_CASE_RATE = 0.35
_LOWERCASE_RATE = 0.08
_TYPO_RATE = 0.10


def _mention(rng: random.Random, product: str) -> str:
    """The product as a customer writes it: lower or title case, maybe after a brand."""
    text = product.title() if rng.random() < _TITLE_CASE_RATE else product
    if rng.random() < _BRAND_RATE:
        text = f"{rng.choice(_BRANDS)} {text}"
    return text


def _typo(rng: random.Random, template: str) -> str:
    """Swap two inner letters of one word, never inside a {placeholder}.

    Only the issue wording gets typos: product names, order ids and the cue
    phrases stay intact, so every label is still recoverable from the text.
    """
    words = template.split(" ")
    candidates = [i for i, word in enumerate(words) if word.isalpha() and len(word) >= 5]
    if not candidates:
        return template
    i = rng.choice(candidates)
    word = words[i]
    j = rng.randrange(1, len(word) - 2)
    words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    return " ".join(words)


def _order_digits(rng: random.Random) -> str:
    return str(rng.randrange(100_000, 1_000_000))


def _distractor(rng: random.Random, kind: str, issue: str, product: str, action: str) -> str:
    """One sentence that mentions a number, product or action that is not the answer."""
    if kind == "tracking":
        prefix = "".join(rng.choice("ABCDEFGHJKLMNPRSTVWXY0123456789") for _ in range(6))
        number = f"1Z{prefix}{rng.randrange(10**10):010d}"
        return rng.choice(_TRACKING_SENTENCES).format(n=number)
    if kind == "phone":
        # The UK form ends in a six-digit group that looks like a bare order number.
        number = rng.choice(
            (
                f"07{rng.randrange(100, 1000)} {rng.randrange(100_000, 1_000_000)}",
                f"555-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}",
                f"+44 7{rng.randrange(100, 1000)} {rng.randrange(100_000, 1_000_000)}",
            )
        )
        return rng.choice(_PHONE_SENTENCES).format(n=number)
    if kind == "invoice":
        return rng.choice(_INVOICE_SENTENCES).format(n=f"INV-{_order_digits(rng)}")
    if kind == "previous_order":
        sentence, forms = rng.choice(_PREVIOUS_ORDER_SENTENCES)
        return sentence.format(ref=rng.choice(forms).format(d=_order_digits(rng)))
    if kind == "second_product":
        other = rng.choice([p for p in PRODUCTS if p != product])
        sentence = rng.choice(_SECOND_PRODUCT_SENTENCES)
        return sentence.format(**{"other": _mention(rng, other), "is": "are" if other in _PLURAL_PRODUCTS else "is"})
    if kind == "negated_action":
        unwanted = rng.choice([a for a in _ACTIONS_FOR_ISSUE[issue] if a != action])
        return f"{rng.choice(_NEGATED_ACTIONS[unwanted])} {rng.choice(_ACTION_PHRASES[action])}"
    raise ValueError(f"Unknown distractor kind {kind!r}")


def _sample_email(rng: random.Random) -> tuple[dict, list[str]]:
    """Draw one email and its labels.

    Returns:
        The row {"prompt", "completion"} and the distractor kinds it carries.
    """
    issue = rng.choice(ISSUE_TYPES)
    product = rng.choice(_ELECTRIC_PRODUCTS if issue == "technical_issue" else PRODUCTS)
    action = rng.choice(_ACTIONS_FOR_ISSUE[issue])
    priority = rng.choice(PRIORITIES)
    digits = None if rng.random() < _NULL_ORDER_RATE else _order_digits(rng)
    distractors: list[str] = []

    template = rng.choice(_ISSUE_TEMPLATES[issue])
    if rng.random() < _TYPO_RATE:
        template = _typo(rng, template)
    plural = product in _PLURAL_PRODUCTS
    fields = {
        "p": _mention(rng, product),
        "was": "were" if plural else "was",
        "is": "are" if plural else "is",
        "has": "have" if plural else "has",
        "does": "do" if plural else "does",
    }
    if "{other}" in template:
        fields["other"] = _mention(rng, rng.choice([p for p in PRODUCTS if p != product]))
        distractors.append("second_product")
    # Capitalize only the first letter: str.capitalize would lowercase a title-case product.
    issue_sentence = template.format(**fields)
    body = [issue_sentence[0].upper() + issue_sentence[1:]]

    if digits is not None:
        ref = rng.choice(_ORDER_FORMS).format(d=digits)
        body.append(rng.choice(_ORDER_SENTENCES).format(ref=ref))
    elif rng.random() < 0.5:
        body.append(rng.choice(_NO_ORDER_SENTENCES))

    action_sentence = rng.choice(_ACTION_PHRASES[action])
    if rng.random() < _DISTRACTOR_RATE:
        kind = rng.choice(DISTRACTOR_KINDS)
        sentence = _distractor(rng, kind, issue, product, action)
        distractors.append(kind)
        if kind == "negated_action":
            # The negation and the wanted action stay together as one unit.
            action_sentence = sentence
        else:
            body.append(sentence)
    body.append(action_sentence)

    if priority != "medium" or rng.random() < 0.5:
        body.append(rng.choice(_PRIORITY_CUES[priority]))
    body.extend(rng.sample(_FILLERS, rng.randint(1, 3)))
    rng.shuffle(body)

    lines = []
    if rng.random() < 0.7:
        lines.append(rng.choice(_GREETINGS))
    lines.append(" ".join(body))
    if rng.random() < 0.7:
        lines.append(f"{rng.choice(_SIGN_OFFS)} {rng.choice(_NAMES)}")
    email = "\n".join(lines)
    if rng.random() < _LOWERCASE_RATE:
        email = email.lower()

    answer = {
        "order_id": None if digits is None else f"ORD-{digits}",
        "issue_type": issue,
        "priority": priority,
        "product": product,
        "action": action,
    }
    completion = json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
    return {"prompt": email, "completion": completion}, distractors


def _generate_with_distractors(n: int, seed: int, exclude: set[str] | None = None) -> list[tuple[dict, list[str]]]:
    """`generate`, keeping each row's distractor kinds (for the data card's statistics)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[tuple[dict, list[str]]] = []
    while len(rows) < n:
        row, distractors = _sample_email(rng)
        words = len(row["prompt"].split())
        # Out-of-range lengths and repeated emails are dropped, not patched, so
        # every kept row is an unaltered draw from the same distribution.
        if not MIN_WORDS <= words <= MAX_WORDS or row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append((row, distractors))
    return rows


def generate(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """Generate `n` distinct support emails with their JSON answers.

    Args:
        n: Number of rows.
        seed: Seed of the random stream; the same seed gives the same rows.
        exclude: Emails that must not be produced (e.g. those of another split).

    Returns:
        Rows {"prompt": email, "completion": compact JSON with the keys in FIELDS}.
    """
    return [row for row, _ in _generate_with_distractors(n, seed, exclude)]


def split_seed(seed: int, split: str) -> int:
    """The seed of one split's stream, derived from the dataset seed.

    Hashing keeps the splits' streams unrelated, unlike seed, seed + 1, ...,
    which would overlap between neighbouring dataset seeds.
    """
    digest = hashlib.sha256(f"support_emails:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def write_splits(
    out_dir: Path | str,
    n_train: int = 1200,
    n_validation: int = 150,
    n_test: int = 300,
    seed: int = DEFAULT_SEED,
    n_new: int = 20,
    n_labelled: int = 50,
) -> dict[str, int]:
    """Write train.jsonl, validation.jsonl and test.jsonl with no email shared between them.

    Also writes new_emails.jsonl: unanswered emails (prompt only) unlike any in
    the splits, the input of the batch inference example; and labelled/batch-001.jsonl:
    labelled rows unlike any of those, as a deployment's newly labelled traffic would be
    (the new rows of configs/monitor.yaml).

    Splits are drawn in the order train, validation, test; each drops emails already
    drawn by an earlier split, so evaluation rows never repeat a training row.

    Args:
        out_dir: Directory to write into (created when missing).
        n_train: Rows in train.jsonl.
        n_validation: Rows in validation.jsonl.
        n_test: Rows in test.jsonl.
        seed: Dataset seed; the same seed gives byte-identical files.
        n_new: Rows in new_emails.jsonl.
        n_labelled: Rows in labelled/batch-001.jsonl.

    Returns:
        Rows written per split name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    counts: dict[str, int] = {}
    for split, n in zip(SPLITS, (n_train, n_validation, n_test)):
        rows = generate(n, split_seed(seed, split), exclude=seen)
        seen.update(row["prompt"] for row in rows)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        # Bytes, not text mode, so no platform rewrites the line endings.
        (out_dir / f"{split}.jsonl").write_bytes(text.encode("utf-8"))
        counts[split] = len(rows)
    new = [{"prompt": row["prompt"]} for row in generate(n_new, split_seed(seed, "new"), exclude=seen)]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in new)
    (out_dir / "new_emails.jsonl").write_bytes(text.encode("utf-8"))
    counts["new_emails"] = len(new)
    seen.update(row["prompt"] for row in new)
    # Drawn last, from a stream of their own: the files above stay as they were before these existed.
    labelled = generate(n_labelled, split_seed(seed, "labelled"), exclude=seen)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in labelled)
    (out_dir / "labelled").mkdir(exist_ok=True)
    (out_dir / "labelled" / "batch-001.jsonl").write_bytes(text.encode("utf-8"))
    counts["labelled"] = len(labelled)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Command line: write the three splits and print their row counts."""
    parser = argparse.ArgumentParser(description="Generate the synthetic support-email extraction dataset.")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: this script's folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train", type=int, default=1200, help="rows in train.jsonl")
    parser.add_argument("--validation", type=int, default=150, help="rows in validation.jsonl")
    parser.add_argument("--test", type=int, default=300, help="rows in test.jsonl")
    args = parser.parse_args(argv)
    counts = write_splits(args.out, args.train, args.validation, args.test, seed=args.seed)
    files = {"labelled": "labelled/batch-001.jsonl"}
    for split, count in counts.items():
        print(f"{split:<10} {count:>5} rows -> {args.out / files.get(split, f'{split}.jsonl')}")


if __name__ == "__main__":
    main()

"""Synthetic shop-assistant chats that answer a customer by calling one of five tools.

Each row is one chat in OpenAI's chat fine-tuning format with tools:
`{"messages": [...], "tools": TOOLS, "parallel_tool_calls": ...}`. The assistant
checks orders, cancels them, tracks packages, searches products or books a callback;
every row carries the same `tools` list, in the same order, so all prompts share
their prefix.

Rows come in six kinds (see KINDS): a single tool call; two calls at once; a call,
its result and a one-sentence answer built from the result; a chat whose first
message lacks the id the call needs, with an earlier assistant turn of weight 0 (a
reply not to train on) or weight 1 (asking for the id), then the id and the call;
and a request no tool serves, answered with a fixed sentence.

The messages are built to be learnable by a small model from a few hundred rows
yet not solvable by a regex:

* every intent, optional argument and id is written in several phrasings, and
  sentences come in random order with optional greetings and filler;
* order ids appear in six surface forms and are always called as `ORD-` plus six
  digits;
* about a third of the single requests (a fifth of the no-tool ones) carry a
  distractor: a phone number whose last group looks like an order number, another
  order that is not the subject, an old phone number, or an order beside a
  tracking number;
* user messages stay short (8-40 words) and tool descriptions are one short
  sentence, because every token costs training time and the tools are in every prompt.

Every row is checked against the format (`check_row`) before it is written.
Generation is deterministic: the same seed gives byte-identical files.

Regenerate the shipped files, which lie beside this script, with:
    python data/store_tools/generate.py --out data/store_tools
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import random
import re
from pathlib import Path

# The shipped files lie beside the generator.
HERE = Path(__file__).resolve().parent

SYSTEM_PROMPT = "You are the assistant of an online shop. Call a tool when one fits."
CANCEL_REASONS = ("changed_mind", "found_cheaper", "ordered_by_mistake", "too_slow")
CALLBACK_TIMES = ("morning", "afternoon", "evening")


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


# Patterns rather than property descriptions: a few tokens that pin the canonical
# form the calls use, and that check_row can enforce.
TOOLS = [
    _tool(
        "get_order_status",
        "Get the status of an order.",
        {"order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"}},
        ["order_id"],
    ),
    _tool(
        "cancel_order",
        "Cancel an order.",
        {
            "order_id": {"type": "string", "pattern": "^ORD-[0-9]{6}$"},
            "reason": {"type": "string", "enum": list(CANCEL_REASONS)},
        },
        ["order_id"],
    ),
    _tool(
        "track_package",
        "Track a package by its tracking number.",
        {"tracking_number": {"type": "string", "pattern": "^1Z[A-Z0-9]{8}$"}},
        ["tracking_number"],
    ),
    _tool(
        "search_products",
        "Search the product catalog.",
        {
            "query": {"type": "string"},
            "max_price": {"type": "number"},
            "in_stock_only": {"type": "boolean"},
        },
        ["query"],
    ),
    _tool(
        "schedule_callback",
        "Book a phone callback from an agent.",
        {
            "phone": {"type": "string"},
            "time": {"type": "string", "enum": list(CALLBACK_TIMES)},
        },
        ["phone"],
    ),
]
TOOL_NAMES = tuple(tool["function"]["name"] for tool in TOOLS)
_SCHEMAS = {tool["function"]["name"]: tool["function"]["parameters"] for tool in TOOLS}

# Shares of rows per kind; the multi-turn kind is split evenly between an earlier
# turn marked not to train (weight 0) and a polite question kept for training (weight 1).
KINDS = {
    "call": 0.55,
    "parallel": 0.08,
    "result_text": 0.20,
    "multiturn_w0": 0.05,
    "multiturn_w1": 0.05,
    "no_tool": 0.07,
}

NO_TOOL_ANSWERS = (
    "I can check orders, cancel them, track packages, search products or book a callback.",
    "Sorry, I can only check orders, cancel them, track packages, search products or book a callback.",
)

# Six surface forms of an order id; {d} is its six digits.
_ORDER_FORMS = ("ORD-{d}", "ord-{d}", "order #{d}", "order no. {d}", "order number {d}", "#{d}")
# After the word "order" only the bare forms read naturally ("my other order #123456").
_BARE_ORDER_FORMS = ("ORD-{d}", "#{d}")
_ORDER_REF_SENTENCES = ("It's {ref}.", "Reference: {ref}.", "This is about {ref}.", "It was {ref}.")
_TRACKING_SENTENCES = ("The tracking number is {t}.", "Tracking: {t}.", "My tracking number is {t}.")
_PHONE_SENTENCES = ("My number is {ph}.", "You can reach me on {ph}.", "Phone: {ph}.")

_STATUS_WITH_ID = (
    "Where is {ref}?",
    "Can you check the status of {ref}?",
    "What's the status of {ref}?",
    "Has {ref} shipped yet?",
    "Any update on {ref}?",
    "When will {ref} arrive?",
    "I'd like to know what's happening with {ref}.",
)
_STATUS_NO_ID = (
    "Where is my order?",
    "Has my order shipped yet?",
    "Can you tell me the status of my order?",
    "I'm still waiting for my order.",
    "When will my order arrive?",
)
_CANCEL_WITH_ID = (
    "Please cancel {ref}.",
    "I want to cancel {ref}.",
    "Can you cancel {ref} for me?",
    "I'd like to cancel {ref}.",
    "Cancel {ref}, please.",
)
_CANCEL_NO_ID = (
    "Please cancel my order.",
    "I need to cancel an order.",
    "Can you cancel my order?",
    "I'd like to cancel my recent order.",
)
_CANCEL_REASON_PHRASES = {
    "changed_mind": ("I changed my mind.", "I've changed my mind about it.", "I don't need it anymore."),
    "found_cheaper": (
        "I found it cheaper somewhere else.",
        "Another shop has it for less.",
        "I saw a better price elsewhere.",
    ),
    "ordered_by_mistake": ("I ordered it by mistake.", "I clicked buy by accident.", "I placed it by mistake."),
    "too_slow": ("It's taking too long to arrive.", "Delivery is too slow.", "I can't wait that long for it."),
}
_TRACK_WITH_ID = (
    "Where is my package {t}?",
    "Can you track {t} for me?",
    "Please track parcel {t}.",
    "What's the latest on tracking number {t}?",
    "Can you check where parcel {t} is?",
)
_TRACK_NO_ID = (
    "Can you track my parcel?",
    "Where is my package right now?",
    "My parcel hasn't moved for days.",
    "Can you tell me where my package is?",
)
_SEARCH_ASKS = (
    "Do you sell {aq}?",
    "I'm looking for {aq}.",
    "Can you find me {aq}?",
    "Do you have {aq}?",
    "I need {aq}, what do you have?",
    "Show me {aq}, please.",
)
_PRICE_PHRASES = (
    "It should be under ${p}.",
    "I can spend no more than {p} dollars.",
    "My budget is ${p} at most.",
    "Nothing over ${p}, please.",
    "Ideally below {p} dollars.",
    "I want to pay ${p} or less.",
)
_STOCK_PHRASES = (
    "Only things you have in stock.",
    "It needs to be in stock.",
    "Only items in stock, please.",
    "Just show what's in stock so it ships now.",
)
_CALLBACK_WITH_ID = (
    "Can someone call me back on {ph}?",
    "Please call me at {ph}.",
    "I'd like a callback on {ph}.",
    "Could an agent ring me on {ph}?",
)
_CALLBACK_NO_ID = (
    "I'd rather talk to someone on the phone.",
    "Can I get a callback?",
    "Please have someone call me.",
    "Can an agent phone me?",
)
_TIME_PHRASES = {
    "morning": ("Mornings work best.", "Before noon would be ideal.", "Please call in the morning."),
    "afternoon": ("The afternoon suits me.", "Any time after lunch.", "Please call in the afternoon."),
    "evening": ("Evenings are best for me.", "After 6pm, please.", "Please call in the evening."),
}

_PARALLEL_STATUS = (
    "Can you check {a} and {b}?",
    "What's the status of {a} and {b}?",
    "I have two orders, {a} and {b}. Where are they?",
    "Where are {a} and {b}?",
)
_PARALLEL_TRACK = (
    "Can you track {a} and {b}?",
    "Where are my parcels {a} and {b}?",
    "I'm waiting on two packages: {a} and {b}.",
    "Please track both {a} and {b}.",
)
_PARALLEL_MIXED = (
    "Can you check {a} and also track parcel {b}?",
    "What's the status of {a}? Also, where is package {b}?",
    "Please look up {a} and track {b} too.",
)

# Earlier assistant turns of the multi-turn kinds. Weight 0: an answer a reviewer
# marked not to train, a made-up guess or a brush-off; weight 1: the right question.
_BAD_ANSWERS = {
    "get_order_status": (
        "Your order shipped yesterday and arrives tomorrow.",
        "I'm not sure, please check your email.",
    ),
    "cancel_order": ("Done, your order is cancelled.", "Orders can't be cancelled, sorry."),
    "track_package": ("Your parcel is out for delivery today.", "Tracking isn't available right now."),
    "schedule_callback": ("Sure, we'll call you tomorrow.", "We don't do phone calls, sorry."),
}
_BAD_GENERIC = ("I can't help with that.", "Please try again later.")
_POLITE_QUESTIONS = {
    "get_order_status": ("Could you tell me your order number, please?", "Sure, what's the order number?"),
    "cancel_order": ("Could you tell me your order number, please?", "Sure, which order number is it?"),
    "track_package": ("Could you share the tracking number, please?", "Sure, what's the tracking number?"),
    "schedule_callback": ("Of course, which phone number should we call?", "Sure, what number can we reach you on?"),
}
_FOLLOW_UP_OPENERS = ("Sorry,", "Oh right,", "My bad,", "Sure,", "")
# How the follow-up gives the id; lowercase, as they may come after an opener.
_FOLLOW_UP_IDS = {
    "order": ("it's {ref}.", "it was {ref}.", "this is about {ref}.", "I mean {ref}."),
    "track_package": ("the tracking number is {t}.", "my tracking number is {t}.", "it's {t}."),
    "schedule_callback": ("my number is {ph}.", "you can reach me on {ph}.", "it's {ph}."),
}
# Said after a weight-0 answer: the customer pushes back before giving the id.
_PUSH_BACKS = ("That doesn't sound right.", "That isn't helpful.", "Hm, that can't be right.")
# Long enough that the shortest follow-up ("Tracking: 1Z...") still has 8 words.
_FOLLOW_UP_TAILS = {
    "get_order_status": ("Can you check it for me now?", "Please look it up for me.", "What's the status of it now?"),
    "cancel_order": (
        "Please go ahead and cancel it now.",
        "Can you cancel it for me now?",
        "I still want it cancelled, please.",
    ),
    "track_package": ("Can you track it for me now?", "Where is my parcel right now?", "Please tell me where it is."),
    "schedule_callback": (
        "Please call me back on that number.",
        "Someone can call me on that one.",
        "That's the best number to reach me.",
    ),
}

_NO_TOOL_QUESTIONS = (
    "Do you ship to {country}?",
    "How long does shipping to {country} take?",
    "What are your opening hours?",
    "Do you have a shop in {city}?",
    "Can I pay with PayPal?",
    "Do you offer gift wrapping?",
    "Is there a student discount?",
    "How do I reset my password?",
    "Are you hiring at the moment?",
    "Can I change the email on my account?",
    "Do you price match other shops?",
    "How long is the warranty on electronics?",
    "Do you have a loyalty programme?",
    "Can I pick up orders in person?",
    "Is your packaging recyclable?",
    "Can I return an item without the receipt?",
)
_COUNTRIES = ("Canada", "Ireland", "Norway", "Japan", "Australia", "Mexico", "Poland", "Brazil")
_CITIES = ("Berlin", "Leeds", "Lyon", "Oslo", "Dublin", "Madrid", "Boston", "Osaka")

# Catalog items for searches; plural names take no article ("I'm looking for bed sheets").
_PRODUCTS = (
    "yoga mat", "water bottle", "phone case", "backpack", "desk lamp", "winter jacket",
    "desk chair", "throw blanket", "chef knife", "umbrella", "laptop sleeve", "board game",
    "travel mug", "bike helmet", "lunch box", "wall clock", "air fryer", "electric kettle",
    "power bank", "webcam", "running shoes", "hiking boots", "bed sheets", "wireless earbuds",
    "sunglasses", "headphones",
)
_PLURAL_PRODUCTS = frozenset(
    {"running shoes", "hiking boots", "bed sheets", "wireless earbuds", "sunglasses", "headphones"}
)
_COLOURS = ("black", "red", "blue", "white", "green", "grey")
_BRANDS = ("Acme", "Lumio", "Nordvik", "Zenko", "Halden", "Orbit", "Vexa", "Pello")
_CITIES_IN_TRANSIT = ("Leeds", "Bristol", "Lyon", "Hamburg", "Newark", "Denver", "Utrecht", "Milan")

# Greetings end a sentence so the shuffled sentence after them keeps its capital.
_GREETINGS = ("Hi!", "Hello!", "Hey there.", "Hi there!", "Good morning.")
# Neutral sentences carrying no label, so that position and length say nothing.
_FILLERS = (
    "Thanks!",
    "Thanks in advance.",
    "Quick question.",
    "Hope you can help.",
    "Much appreciated.",
    "Sorry to bother you.",
    "I'm a regular customer.",
)
# Filler that only reads naturally when the message is about an order.
_ORDER_FILLERS = (
    "I ordered it last week.",
    "It was a birthday present.",
    "I paid by card.",
    "It's my first order here.",
)

# Said beside the request; each mentions a number that is not the answer.
_PHONE_DISTRACTORS = ("Call me on {ph} if needed.", "My phone number is {ph}.", "You can text me on {ph}.")
_OTHER_ORDER_DISTRACTORS = (
    "My other order {ref} is fine.",
    "My last order, {ref}, arrived fine.",
    "This isn't about {ref}.",
)
# The same for messages about no order, where "other order" would not read.
_LAST_ORDER_DISTRACTORS = ("My last order, {ref}, arrived fine.", "My last order {ref} came quickly.")
_ORDER_NEXT_TO_TRACKING = ("It's for {ref}.", "The parcel is from {ref}.")
_OLD_PHONE_DISTRACTORS = ("My old number {ph} no longer works.", "Don't use {ph}, that's my old number.")
_CALLBACK_ORDER_DISTRACTORS = ("It's about {ref}.", "I have a question about {ref}.")

MIN_WORDS = 8
MAX_WORDS = 40
DEFAULT_SEED = 42
SPLITS = ("train", "validation", "test")

# Shares chosen so each effect is common enough to learn from a few hundred rows.
_SPLIT_RATE = 0.4  # intent and id in two sentences rather than one
_OPTIONAL_ARG_RATE = 0.5
_DISTRACTOR_RATE = 0.33
_GREETING_RATE = 0.4
_COLOUR_RATE = 0.3
_BASE_DATE = datetime.date(2026, 11, 1)


def _cap(sentence: str) -> str:
    """Capitalize the first letter only: str.capitalize would lowercase `ORD-` and `1Z`."""
    return sentence[0].upper() + sentence[1:]


def _digits(rng: random.Random) -> str:
    return str(rng.randrange(100_000, 1_000_000))


def _tracking(rng: random.Random) -> str:
    return "1Z" + "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789") for _ in range(8))


def _phone(rng: random.Random) -> str:
    # The UK forms end in a six-digit group that looks like a bare order number.
    return rng.choice(
        (
            f"07{rng.randrange(100, 1000)} {_digits(rng)}",
            f"+44 7{rng.randrange(100, 1000)} {_digits(rng)}",
            f"555-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}",
            f"(555) {rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}",
        )
    )


def _date(rng: random.Random) -> str:
    return (_BASE_DATE + datetime.timedelta(days=rng.randrange(61))).isoformat()


def _price(rng: random.Random, ceiling: int) -> float:
    """A shop price below `ceiling`, always with cents so it reads as a price."""
    # Rounded so the sum prints with two decimals, whatever float addition leaves.
    return round(rng.randrange(5, ceiling) + rng.choice((0.99, 0.49)), 2)


def _compose(rng: random.Random, body: list[str], order_context: bool) -> str:
    """Shuffle the sentences, add 0-2 fillers and maybe a greeting."""
    fillers = _FILLERS + _ORDER_FILLERS if order_context else _FILLERS
    body = body + rng.sample(fillers, rng.choice((0, 1, 1, 2)))
    rng.shuffle(body)
    if rng.random() < _GREETING_RATE:
        body.insert(0, rng.choice(_GREETINGS))
    return " ".join(body)


def _order_distractor(rng: random.Random, digits: str | None) -> str:
    """A phone number or another order, beside a message about order `digits` (None: about no order)."""
    if rng.random() < 0.5:
        return rng.choice(_PHONE_DISTRACTORS).format(ph=_phone(rng))
    other = _digits(rng)
    while other == digits:
        other = _digits(rng)
    sentences = _LAST_ORDER_DISTRACTORS if digits is None else _OTHER_ORDER_DISTRACTORS
    return rng.choice(sentences).format(ref=rng.choice(_BARE_ORDER_FORMS).format(d=other))


def _request(rng: random.Random, tool: str) -> tuple[list[str], dict, bool]:
    """Draw the sentences of one request for `tool` and the call's arguments.

    Returns:
        The request's sentences (unshuffled), the arguments in schema order, and
        whether the message is about an order (which decides the filler pool).
    """
    distract = rng.random() < _DISTRACTOR_RATE
    if tool in ("get_order_status", "cancel_order"):
        digits = _digits(rng)
        ref = rng.choice(_ORDER_FORMS).format(d=digits)
        status = tool == "get_order_status"
        with_id, no_id = (_STATUS_WITH_ID, _STATUS_NO_ID) if status else (_CANCEL_WITH_ID, _CANCEL_NO_ID)
        if rng.random() < _SPLIT_RATE:
            body = [rng.choice(no_id), rng.choice(_ORDER_REF_SENTENCES).format(ref=ref)]
        else:
            body = [_cap(rng.choice(with_id).format(ref=ref))]
        args: dict = {"order_id": f"ORD-{digits}"}
        if tool == "cancel_order" and rng.random() < _OPTIONAL_ARG_RATE:
            reason = rng.choice(CANCEL_REASONS)
            body.append(rng.choice(_CANCEL_REASON_PHRASES[reason]))
            args["reason"] = reason
        if distract:
            body.append(_order_distractor(rng, digits))
        return body, args, True
    if tool == "track_package":
        number = _tracking(rng)
        if rng.random() < _SPLIT_RATE:
            body = [rng.choice(_TRACK_NO_ID), rng.choice(_TRACKING_SENTENCES).format(t=number)]
        else:
            body = [rng.choice(_TRACK_WITH_ID).format(t=number)]
        if distract:
            # An order id beside the tracking number: the call still takes the 1Z number.
            if rng.random() < 0.5:
                ref = rng.choice(_ORDER_FORMS).format(d=_digits(rng))
                body.append(rng.choice(_ORDER_NEXT_TO_TRACKING).format(ref=ref))
            else:
                body.append(rng.choice(_PHONE_DISTRACTORS).format(ph=_phone(rng)))
        return body, {"tracking_number": number}, True
    if tool == "search_products":
        product = rng.choice(_PRODUCTS)
        query = f"{rng.choice(_COLOURS)} {product}" if rng.random() < _COLOUR_RATE else product
        article = "" if product in _PLURAL_PRODUCTS else ("an " if query[0] in "aeiou" else "a ")
        body = [rng.choice(_SEARCH_ASKS).format(aq=article + query)]
        args = {"query": query}
        if rng.random() < _OPTIONAL_ARG_RATE:
            price = rng.choice((15, 20, 25, 30, 40, 50, 60, 75, 80, 100, 120, 150, 200))
            body.append(rng.choice(_PRICE_PHRASES).format(p=price))
            args["max_price"] = price
        if rng.random() < _OPTIONAL_ARG_RATE * 0.6:
            body.append(rng.choice(_STOCK_PHRASES))
            args["in_stock_only"] = True
        if distract:
            body.append(_order_distractor(rng, None))
        return body, args, False
    if tool == "schedule_callback":
        phone = _phone(rng)
        if rng.random() < _SPLIT_RATE:
            body = [rng.choice(_CALLBACK_NO_ID), rng.choice(_PHONE_SENTENCES).format(ph=phone)]
        else:
            body = [rng.choice(_CALLBACK_WITH_ID).format(ph=phone)]
        args = {"phone": phone}
        if rng.random() < _OPTIONAL_ARG_RATE:
            time = rng.choice(CALLBACK_TIMES)
            body.append(rng.choice(_TIME_PHRASES[time]))
            args["time"] = time
        if distract:
            if rng.random() < 0.5:
                ref = rng.choice(_ORDER_FORMS).format(d=_digits(rng))
                body.append(rng.choice(_CALLBACK_ORDER_DISTRACTORS).format(ref=ref))
            else:
                old = _phone(rng)
                body.append(rng.choice(_OLD_PHONE_DISTRACTORS).format(ph=old))
        return body, args, False
    raise ValueError(f"Unknown tool {tool!r}")


def _call(n: int, name: str, args: dict) -> dict:
    return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def _result(rng: random.Random, name: str, args: dict) -> tuple[dict, str]:
    """A plausible tool result and the one-sentence answer that states it."""
    if name == "get_order_status":
        order = args["order_id"]
        status = rng.choice(("shipped", "processing", "delivered", "cancelled"))
        if status == "shipped":
            eta = _date(rng)
            return {"status": status, "eta": eta}, f"Your order {order} has shipped and should arrive on {eta}."
        if status == "processing":
            eta = _date(rng)
            return {"status": status, "eta": eta}, f"Your order {order} is being processed and should arrive on {eta}."
        if status == "delivered":
            day = _date(rng)
            return {"status": status, "delivered_on": day}, f"Your order {order} was delivered on {day}."
        return {"status": status}, f"Your order {order} was cancelled."
    if name == "cancel_order":
        order = args["order_id"]
        if rng.random() < 0.75:
            refund = _price(rng, 200)
            answer = f"Order {order} is cancelled and ${refund:.2f} will be refunded."
            return {"cancelled": True, "refund": refund}, answer
        answer = f"Order {order} has already shipped, so it can't be cancelled."
        return {"cancelled": False, "error": "already_shipped"}, answer
    if name == "track_package":
        number = args["tracking_number"]
        status = rng.choice(("in_transit", "in_transit", "out_for_delivery", "delivered"))
        if status == "in_transit":
            city, eta = rng.choice(_CITIES_IN_TRANSIT), _date(rng)
            return (
                {"status": status, "location": city, "eta": eta},
                f"Package {number} is in transit near {city} and should arrive on {eta}.",
            )
        if status == "out_for_delivery":
            return {"status": status}, f"Package {number} is out for delivery today."
        day = _date(rng)
        return {"status": status, "delivered_on": day}, f"Package {number} was delivered on {day}."
    if name == "search_products":
        query = args["query"]
        n_hits = rng.choice((0, 1, 1, 2, 2, 2))
        brands = rng.sample(_BRANDS, n_hits)
        hits = []
        for brand in brands:
            in_stock = True if args.get("in_stock_only") else rng.random() < 0.8
            price = _price(rng, int(args.get("max_price", 150)))
            hits.append({"name": f"{brand} {query.title()}", "price": price, "in_stock": in_stock})
        if not hits:
            return {"results": []}, f"I found nothing matching {query}."
        parts = [f"the {h['name']} for ${h['price']:.2f}" + ("" if h["in_stock"] else " (out of stock)") for h in hits]
        return {"results": hits}, f"I found {' and '.join(parts)}."
    if name == "schedule_callback":
        # Without a requested time the tool picks a slot itself.
        time, day = args.get("time") or rng.choice(CALLBACK_TIMES), _date(rng)
        return (
            {"booked": True, "date": day, "time": time},
            f"We'll call you on {args['phone']} on the {time} of {day}.",
        )
    raise ValueError(f"Unknown tool {name!r}")


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _row(messages: list[dict], parallel: bool | None = None) -> dict:
    row = {"messages": [{"role": "system", "content": SYSTEM_PROMPT}] + messages, "tools": TOOLS}
    if parallel is not None:
        row["parallel_tool_calls"] = parallel
    return row


def _sample_parallel(rng: random.Random) -> dict:
    """Two calls in one assistant turn: two orders, two parcels, or one of each."""
    shape = rng.choice(("status", "track", "mixed"))
    first, second = _digits(rng), _digits(rng)
    while second == first:
        second = _digits(rng)
    if shape == "status":
        a, b = (rng.choice(_ORDER_FORMS).format(d=d) for d in (first, second))
        text = rng.choice(_PARALLEL_STATUS).format(a=a, b=b)
        calls = [("get_order_status", {"order_id": f"ORD-{d}"}) for d in (first, second)]
    elif shape == "track":
        a, b = _tracking(rng), _tracking(rng)
        text = rng.choice(_PARALLEL_TRACK).format(a=a, b=b)
        calls = [("track_package", {"tracking_number": t}) for t in (a, b)]
    else:
        number = _tracking(rng)
        text = rng.choice(_PARALLEL_MIXED).format(a=rng.choice(_ORDER_FORMS).format(d=first), b=number)
        calls = [("get_order_status", {"order_id": f"ORD-{first}"}), ("track_package", {"tracking_number": number})]
    user = _compose(rng, [text], order_context=True)
    assistant = {"role": "assistant", "tool_calls": [_call(i + 1, name, args) for i, (name, args) in enumerate(calls)]}
    return _row([_user(user), assistant], parallel=True)


def _sample_multiturn(rng: random.Random, weight: int) -> dict:
    """A first message lacking the id, an earlier assistant turn, the id, then the call."""
    tool = rng.choice(("get_order_status", "cancel_order", "track_package", "schedule_callback"))
    first = []
    args: dict
    if tool in ("get_order_status", "cancel_order"):
        digits = _digits(rng)
        first.append(rng.choice(_STATUS_NO_ID if tool == "get_order_status" else _CANCEL_NO_ID))
        id_sentence = rng.choice(_FOLLOW_UP_IDS["order"]).format(ref=rng.choice(_ORDER_FORMS).format(d=digits))
        args = {"order_id": f"ORD-{digits}"}
    elif tool == "track_package":
        number = _tracking(rng)
        first.append(rng.choice(_TRACK_NO_ID))
        id_sentence = rng.choice(_FOLLOW_UP_IDS[tool]).format(t=number)
        args = {"tracking_number": number}
    else:
        phone = _phone(rng)
        first.append(rng.choice(_CALLBACK_NO_ID))
        id_sentence = rng.choice(_FOLLOW_UP_IDS[tool]).format(ph=phone)
        args = {"phone": phone}
    # The optional argument may come in the first message: the call must still carry it.
    if tool == "cancel_order" and rng.random() < _OPTIONAL_ARG_RATE:
        reason = rng.choice(CANCEL_REASONS)
        first.append(rng.choice(_CANCEL_REASON_PHRASES[reason]))
        args["reason"] = reason
    if tool == "schedule_callback" and rng.random() < _OPTIONAL_ARG_RATE:
        time = rng.choice(CALLBACK_TIMES)
        first.append(rng.choice(_TIME_PHRASES[time]))
        args["time"] = time
    order_context = tool != "schedule_callback"
    first_text = _compose(rng, first, order_context)

    if weight == 0:
        earlier = rng.choice(_BAD_ANSWERS[tool] + _BAD_GENERIC)
    else:
        earlier = rng.choice(_POLITE_QUESTIONS[tool])
    opener = rng.choice(_FOLLOW_UP_OPENERS)
    parts = [rng.choice(_PUSH_BACKS)] if weight == 0 and rng.random() < 0.5 else []
    id_part = f"{opener} {id_sentence}" if opener else _cap(id_sentence)
    parts += [id_part, rng.choice(_FOLLOW_UP_TAILS[tool])]
    follow_up = " ".join(parts)
    messages = [
        _user(first_text),
        {"role": "assistant", "content": earlier, "weight": weight},
        _user(follow_up),
        {"role": "assistant", "tool_calls": [_call(1, tool, args)]},
    ]
    return _row(messages)


def _sample_no_tool(rng: random.Random) -> dict:
    """A request no tool serves, sometimes beside an order or phone number."""
    question = rng.choice(_NO_TOOL_QUESTIONS).format(country=rng.choice(_COUNTRIES), city=rng.choice(_CITIES))
    body = [question]
    if rng.random() < 0.25:
        body.append(_order_distractor(rng, None))
    user = _compose(rng, body, order_context=False)
    return _row([_user(user), {"role": "assistant", "content": rng.choice(NO_TOOL_ANSWERS)}])


def _sample_row(rng: random.Random, kind: str) -> dict:
    """Draw one row of `kind` (a key of KINDS)."""
    if kind == "parallel":
        return _sample_parallel(rng)
    if kind in ("multiturn_w0", "multiturn_w1"):
        return _sample_multiturn(rng, 0 if kind == "multiturn_w0" else 1)
    if kind == "no_tool":
        return _sample_no_tool(rng)
    tool = rng.choice(TOOL_NAMES)
    body, args, order_context = _request(rng, tool)
    user = _user(_compose(rng, body, order_context))
    call = {"role": "assistant", "tool_calls": [_call(1, tool, args)]}
    if kind == "call":
        return _row([user, call], parallel=False)
    result, answer = _result(rng, tool, args)
    tool_message = {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(result)}
    return _row([user, call, tool_message, {"role": "assistant", "content": answer}])


_JSON_TYPES = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}


def _parse_json(text: str, what: str) -> object:
    """json.loads, failing with an AssertionError like every other check."""
    try:
        return json.loads(text)
    except ValueError as error:
        raise AssertionError(f"{what} is not JSON: {error}") from None


def _check_arguments(name: str, arguments: object) -> None:
    """Assert that a call's `arguments` string parses to an object its tool's schema accepts."""
    schema = _SCHEMAS[name]
    assert isinstance(arguments, str), f"{name}: arguments must be a JSON string"
    args = _parse_json(arguments, f"{name}: arguments")
    assert isinstance(args, dict), f"{name}: arguments must parse to an object"
    props, required = schema["properties"], schema["required"]
    missing = [key for key in required if key not in args]
    assert not missing, f"{name}: missing required {missing}"
    unknown = [key for key in args if key not in props]
    assert not unknown, f"{name}: unknown keys {unknown}"
    for key, value in args.items():
        prop = props[key]
        assert _JSON_TYPES[prop["type"]](value), f"{name}.{key}: {value!r} is not a {prop['type']}"
        if "enum" in prop:
            assert value in prop["enum"], f"{name}.{key}: {value!r} not in {prop['enum']}"
        if "pattern" in prop:
            # Python's $ also matches before a final newline, which JSON Schema's does not.
            matches = re.search(prop["pattern"], value) and not value.endswith("\n")
            assert matches, f"{name}.{key}: {value!r} does not match {prop['pattern']}"
    # Required first, then optional, each in the schema's order: one order to learn.
    order = required + [key for key in props if key not in required]
    assert list(args) == [key for key in order if key in args], f"{name}: argument order {list(args)}"


def check_row(row: dict) -> None:
    """Assert that `row` is a valid chat fine-tuning row with tools, in OpenAI's format.

    Checks: only the keys messages/tools/parallel_tool_calls; the shared TOOLS list;
    roles system (first only), user, assistant and tool; every assistant message holds
    text or tool calls (then no `content` key); call ids unique; every call's
    arguments valid for its tool; every tool message answers an earlier, unanswered
    call of the row, and every call but the last message's is answered before the
    next turn; weights only 0 or 1 and only on assistant messages; the last message an
    assistant message that is trained on.

    Raises:
        AssertionError: naming the first rule the row breaks.
    """
    assert set(row) <= {"messages", "tools", "parallel_tool_calls"}, f"unknown row keys {sorted(row)}"
    assert row["tools"] == TOOLS, "tools differ from the shared list"
    if "parallel_tool_calls" in row:
        assert isinstance(row["parallel_tool_calls"], bool), "parallel_tool_calls must be a boolean"
    messages = row["messages"]
    assert isinstance(messages, list) and messages, "messages must be a non-empty list"
    call_ids: set[str] = set()
    pending: list[str] = []  # calls of the latest assistant turn still awaiting a tool message
    for i, message in enumerate(messages):
        role = message.get("role")
        assert role in ("system", "user", "assistant", "tool"), f"message {i}: bad role {role!r}"
        if "weight" in message:
            assert role == "assistant", f"message {i}: weight on a {role} message"
            weight = message["weight"]
            assert weight in (0, 1) and not isinstance(weight, bool), f"message {i}: weight must be 0 or 1"
        if role != "tool":
            assert not pending, f"message {i}: calls {pending} unanswered before the next turn"
        if role in ("system", "user"):
            assert set(message) == {"role", "content"}, f"message {i}: keys {sorted(message)}"
            assert isinstance(message["content"], str) and message["content"].strip(), f"message {i}: empty content"
            assert role == "user" or i == 0, f"message {i}: system message not first"
        elif role == "assistant":
            if "tool_calls" in message:
                assert set(message) <= {"role", "tool_calls", "weight"}, f"message {i}: keys {sorted(message)}"
                calls = message["tool_calls"]
                assert isinstance(calls, list) and calls, f"message {i}: empty tool_calls"
                if len(calls) > 1:
                    assert row.get("parallel_tool_calls") is True, "several calls need parallel_tool_calls true"
                for call in calls:
                    assert set(call) == {"id", "type", "function"}, f"message {i}: call keys {sorted(call)}"
                    assert call["type"] == "function", f"message {i}: call type {call['type']!r}"
                    call_id = call["id"]
                    assert isinstance(call_id, str) and call_id not in call_ids, f"message {i}: bad or repeated id"
                    call_ids.add(call_id)
                    function = call["function"]
                    assert set(function) == {"name", "arguments"}, f"message {i}: function keys {sorted(function)}"
                    assert function["name"] in _SCHEMAS, f"message {i}: unknown tool {function['name']!r}"
                    _check_arguments(function["name"], function["arguments"])
                pending = [call["id"] for call in calls]
            else:
                assert set(message) <= {"role", "content", "weight"}, f"message {i}: keys {sorted(message)}"
                content = message.get("content")
                assert isinstance(content, str) and content.strip(), f"message {i}: empty content"
        else:
            assert set(message) == {"role", "tool_call_id", "content"}, f"message {i}: keys {sorted(message)}"
            assert message["tool_call_id"] in pending, f"message {i}: answers no pending call"
            pending.remove(message["tool_call_id"])
            assert isinstance(message["content"], str), f"message {i}: content must be a string"
            _parse_json(message["content"], f"message {i}: tool result")
    last = messages[-1]
    assert last["role"] == "assistant", "the last message must be an assistant message"
    assert last.get("weight", 1) == 1, "the last message must be trained on"


def _user_key(row: dict) -> str:
    """What makes two rows the same: their user messages (the answer follows from them)."""
    return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")


def _kind_sequence(rng: random.Random, n: int) -> list[str]:
    """The kinds of `n` rows, in random order, each as close to its KINDS share as whole rows allow.

    Fixed counts rather than independent draws: a split of 80 rows would otherwise
    hold anywhere from 1 to 8 rows of a 5% kind.
    """
    exact = {kind: share * n for kind, share in KINDS.items()}
    counts = {kind: int(value) for kind, value in exact.items()}
    # Largest remainders get the rows left over; ties go to the earlier kind.
    by_remainder = sorted(KINDS, key=lambda kind: counts[kind] - exact[kind])
    for kind in by_remainder[: n - sum(counts.values())]:
        counts[kind] += 1
    kinds = [kind for kind in KINDS for _ in range(counts[kind])]
    rng.shuffle(kinds)
    return kinds


def _generate_with_kinds(n: int, seed: int, exclude: set[str] | None = None) -> list[tuple[dict, str]]:
    """`generate`, keeping each row's kind (for the data card's statistics)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    rows: list[tuple[dict, str]] = []
    for kind in _kind_sequence(rng, n):
        # Out-of-range lengths and repeats are dropped, not patched, so every kept
        # row is an unaltered draw from the same distribution. They are redrawn
        # within the kind: redrawing the kind too would shift the shares towards
        # the kinds that are rarely too short.
        while True:
            row = _sample_row(rng, kind)
            users = [m["content"] for m in row["messages"] if m["role"] == "user"]
            key = _user_key(row)
            if all(MIN_WORDS <= len(u.split()) <= MAX_WORDS for u in users) and key not in seen:
                break
        check_row(row)
        seen.add(key)
        rows.append((row, kind))
    return rows


def generate(n: int, seed: int, exclude: set[str] | None = None) -> list[dict]:
    """Generate `n` distinct, format-checked rows.

    Args:
        n: Number of rows.
        seed: Seed of the random stream; the same seed gives the same rows.
        exclude: User texts (see `_user_key`) that must not be produced, e.g. those of another split.

    Returns:
        Rows {"messages", "tools"[, "parallel_tool_calls"]} in OpenAI's chat fine-tuning format.
    """
    return [row for row, _ in _generate_with_kinds(n, seed, exclude)]


def split_seed(seed: int, split: str) -> int:
    """The seed of one split's stream, derived from the dataset seed.

    Hashing keeps the splits' streams unrelated, unlike seed, seed + 1, ...,
    which would overlap between neighbouring dataset seeds.
    """
    digest = hashlib.sha256(f"store_tools:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _stats(rows: list[tuple[dict, str]]) -> dict:
    users = [m["content"] for row, _ in rows for m in row["messages"] if m["role"] == "user"]
    return {
        "rows": len(rows),
        "kinds": {kind: sum(k == kind for _, k in rows) / len(rows) for kind in KINDS},
        "user_messages": len(users),
        "mean_chars": sum(map(len, users)) / len(users),
        "max_chars": max(map(len, users)),
        "mean_words": sum(len(u.split()) for u in users) / len(users),
        "max_words": max(len(u.split()) for u in users),
    }


def write_splits(
    out_dir: Path | str,
    n_train: int = 600,
    n_validation: int = 80,
    n_test: int = 150,
    seed: int = DEFAULT_SEED,
) -> dict[str, dict]:
    """Write train.jsonl, validation.jsonl and test.jsonl with no user text shared between them.

    Splits are drawn in the order train, validation, test; each drops rows whose
    user text an earlier split already drew, so evaluation rows never repeat a
    training row.

    Args:
        out_dir: Directory to write into (created when missing).
        n_train: Rows in train.jsonl.
        n_validation: Rows in validation.jsonl.
        n_test: Rows in test.jsonl.
        seed: Dataset seed; the same seed gives byte-identical files.

    Returns:
        Statistics per split name (rows, kind shares, user message lengths), and
        the same over all splits under "all".
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    stats: dict[str, dict] = {}
    everything: list[tuple[dict, str]] = []
    for split, n in zip(SPLITS, (n_train, n_validation, n_test)):
        rows = _generate_with_kinds(n, split_seed(seed, split), exclude=seen)
        seen.update(_user_key(row) for row, _ in rows)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row, _ in rows)
        # Bytes, not text mode, so no platform rewrites the line endings.
        (out_dir / f"{split}.jsonl").write_bytes(text.encode("utf-8"))
        stats[split] = _stats(rows)
        everything += rows
    stats["all"] = _stats(everything)
    return stats


def main(argv: list[str] | None = None) -> None:
    """Command line: write the three splits and print their statistics."""
    parser = argparse.ArgumentParser(description="Generate the synthetic shop tool-calling dataset.")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: this script's folder)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train", type=int, default=600, help="rows in train.jsonl")
    parser.add_argument("--validation", type=int, default=80, help="rows in validation.jsonl")
    parser.add_argument("--test", type=int, default=150, help="rows in test.jsonl")
    args = parser.parse_args(argv)
    if not __debug__:
        # check_row is made of asserts, which -O strips: refuse rather than write unchecked rows.
        parser.error("run without python -O: the format checks are assert statements")
    stats = write_splits(args.out, args.train, args.validation, args.test, seed=args.seed)
    header = "split       rows  " + "  ".join(f"{kind:>12}" for kind in KINDS) + "  user chars mean/max  words mean/max"
    print(header)
    for split, s in stats.items():
        shares = "  ".join(f"{s['kinds'][kind]:>11.1%} " for kind in KINDS)
        print(
            f"{split:<10} {s['rows']:>5}  {shares}  {s['mean_chars']:>10.1f} / {s['max_chars']:<4}"
            f"  {s['mean_words']:>6.1f} / {s['max_words']}"
        )
    for split in SPLITS:
        print(f"wrote {args.out / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()

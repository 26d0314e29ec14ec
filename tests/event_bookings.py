"""A second task, of another shape than the support emails: venue booking requests → eight JSON fields.

The answers are about twice as long as the support emails' (a free-text `requests`
field copied from the message, names, a date), and the rows come as CSV files with
their own column names (`message`, `extracted`): what a user's own data looks like
when the shipped config is pointed at it with only its `data:` section changed.

Seeded: the same seed writes the same files.

    python -m tests.event_bookings --out /tmp/bookings
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

COLUMNS = {"prompt": "message", "completion": "extracted"}
SYSTEM_PROMPT = (
    "Extract contact, organisation, event, date, guests, room, catering and requests from the booking request as JSON."
)

_FIRST = ("Maria", "Tobias", "Aisha", "Kenji", "Lena", "Omar", "Sofia", "Pavel", "Grace", "Diego", "Ingrid", "Ravi",
          "Chen", "Amara", "Lukas", "Noor")
_LAST = ("Okafor", "Lindqvist", "Haddad", "Tanaka", "Moreau", "Kowalski", "Silva", "Brennan", "Novak", "Mensah",
         "Petrov", "Castillo", "Byrne", "Yilmaz", "Fischer", "Das")
_ORG_FIRST = ("Brightwater", "Northfield", "Bluepeak", "Silverline", "Oakridge", "Redstone", "Greenway", "Clearview",
              "Harbourside", "Stonebridge")
_ORG_SECOND = ("Analytics", "Logistics", "Design", "Foods", "Robotics", "Health", "Studios", "Energy", "Partners",
               "Software")
_ORG_SUFFIX = ("Ltd", "GmbH", "Inc", "Group", "Co")
EVENTS = ("conference", "workshop", "wedding", "product launch", "team offsite", "charity gala", "birthday party")
ROOMS = ("Harbour Hall", "Garden Room", "Loft", "Main Auditorium", "Studio B", "Terrace")
CATERING = {
    "none": ("We will bring our own food.", "No catering is needed."),
    "coffee": ("Coffee and tea through the day would be enough.", "Just coffee breaks, please."),
    "lunch": ("We need lunch for everyone.", "Please include a buffet lunch."),
    "dinner": ("We would like a seated dinner in the evening.", "Please arrange dinner for all guests."),
}
_REQUESTS = (
    "Please set up a projector and two wireless microphones near the stage.",
    "We need step-free access for two guests who use wheelchairs.",
    "Could you provide a separate quiet room for nursing parents?",
    "Please arrange round tables of eight with name cards.",
    "We would like the doors to open thirty minutes early for registration.",
    "Please keep the room below twenty degrees during the afternoon.",
    "We need a lectern, a clicker and a spare laptop charger.",
    "Please prepare vegetarian and gluten-free options for about a third of the guests.",
    "Could a technician stay on site until the end of the evening?",
    "We need space for a photo booth and a small dance floor.",
    "Please put up signs from the main entrance to the room.",
    "We would like a coat rack and a secure place for luggage.",
)
_GREETINGS = ("Hello,", "Hi there,", "Good afternoon,", "Dear events team,")
_SIGN_OFFS = ("Best regards,", "Thanks,", "Kind regards,", "Many thanks,")
_FILLERS = ("We booked with you two years ago and loved it.", "Let me know if you need anything else from us.",
            "A colleague recommended your venue.", "We are flexible on the exact start time.")


def _row(rng: random.Random) -> dict:
    contact = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    organisation = f"{rng.choice(_ORG_FIRST)} {rng.choice(_ORG_SECOND)} {rng.choice(_ORG_SUFFIX)}"
    event = rng.choice(EVENTS)
    date = f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    guests = rng.choice(range(12, 401, 4))
    room = rng.choice(ROOMS)
    catering = rng.choice(sorted(CATERING))
    requests = " ".join(rng.sample(_REQUESTS, rng.choice((1, 2))))
    sentences = [
        f"I am writing on behalf of {organisation} to book a {event} on {date}.",
        f"We expect {guests} guests" + rng.choice((".", " in total.", ", give or take a few.")),
        rng.choice((f"We would like the {room}.", f"The {room} would suit us best.", f"Is the {room} free?")),
        rng.choice(CATERING[catering]),
        requests,
    ]
    body = sentences[:1] + rng.sample(sentences[1:], len(sentences) - 1)
    if rng.random() < 0.5:
        body.insert(rng.randint(1, len(body)), rng.choice(_FILLERS))
    message = f"{rng.choice(_GREETINGS)}\n{' '.join(body)}\n{rng.choice(_SIGN_OFFS)} {contact}"
    answer = {"contact": contact, "organisation": organisation, "event": event, "date": date, "guests": guests,
              "room": room, "catering": catering, "requests": requests}
    return {"message": message, "extracted": json.dumps(answer, separators=(",", ":"))}


def write_csv_splits(out: Path, train: int = 240, validation: int = 16, test: int = 40, seed: int = 7) -> dict:
    """Write train.csv, validation.csv and test.csv (no message in two splits); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    paths = {}
    for split, count in (("train", train), ("validation", validation), ("test", test)):
        rows = []
        while len(rows) < count:
            row = _row(rng)
            if row["message"] not in seen:
                seen.add(row["message"])
                rows.append(row)
        paths[split] = out / f"{split}.csv"
        with paths[split].open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS.values()))
            writer.writeheader()
            writer.writerows(rows)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the event-booking task as CSV splits.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for split, path in write_csv_splits(args.out, seed=args.seed).items():
        print(split, path)

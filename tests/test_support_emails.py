"""The synthetic support-email dataset: schema, determinism, splits, and that it needs a model."""

import importlib.util
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "support_emails"

# The generator lives beside its data, outside any package: imported from its file.
_spec = importlib.util.spec_from_file_location("support_emails_generate", DATA_DIR / "generate.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)
ACTIONS, FIELDS, ISSUE_TYPES, PRIORITIES, PRODUCTS = (
    generator.ACTIONS, generator.FIELDS, generator.ISSUE_TYPES, generator.PRIORITIES, generator.PRODUCTS)
MAX_WORDS, MIN_WORDS = generator.MAX_WORDS, generator.MIN_WORDS
generate, main, write_splits = generator.generate, generator.main, generator.write_splits
SPLIT_SIZES = {"train": 1200, "validation": 150, "test": 300}


def read_rows(split: str) -> list[dict]:
    lines = (DATA_DIR / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def answers(rows: list[dict]) -> list[dict]:
    return [json.loads(row["completion"]) for row in rows]


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {split: read_rows(split) for split in SPLIT_SIZES}


@pytest.fixture(scope="module")
def all_rows(splits) -> list[dict]:
    return [row for rows in splits.values() for row in rows]


# --- determinism -------------------------------------------------------------------------


def test_same_seed_gives_same_rows():
    assert generate(40, seed=7) == generate(40, seed=7)


def test_different_seeds_give_different_rows():
    first = {row["prompt"] for row in generate(40, seed=7)}
    second = {row["prompt"] for row in generate(40, seed=8)}
    assert not first & second


def test_generate_skips_excluded_emails():
    rows = generate(30, seed=3)
    excluded = {rows[0]["prompt"], rows[5]["prompt"]}
    again = generate(30, seed=3, exclude=excluded)
    assert len(again) == 30
    assert not excluded & {row["prompt"] for row in again}
    # The stream is the same; only the excluded draws are skipped.
    assert again[:4] == rows[1:5]


def test_committed_files_match_the_generator(tmp_path):
    counts = write_splits(tmp_path)
    assert counts == {**SPLIT_SIZES, "new_emails": 20, "labelled": 50}
    for name in [*SPLIT_SIZES, "new_emails", "labelled/batch-001"]:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (DATA_DIR / f"{name}.jsonl").read_bytes(), name


def test_labelled_rows_are_unseen():
    """The monitor's new rows: the same task and distribution, none of them an email of another file."""
    seen = {row["prompt"] for split in SPLIT_SIZES for row in read_rows(split)}
    seen |= {json.loads(line)["prompt"] for line in (DATA_DIR / "new_emails.jsonl").read_text().splitlines()}
    labelled = [json.loads(line) for line in (DATA_DIR / "labelled" / "batch-001.jsonl").read_text().splitlines()]
    assert len(labelled) == 50 and all(set(row) == {"prompt", "completion"} for row in labelled)
    assert not seen & {row["prompt"] for row in labelled}


def test_new_emails_are_unanswered_and_unseen():
    seen = {row["prompt"] for split in SPLIT_SIZES for row in read_rows(split)}
    new = [json.loads(line) for line in (DATA_DIR / "new_emails.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(new) == 20 and all(set(row) == {"prompt"} for row in new)
    assert not seen & {row["prompt"] for row in new}


def test_other_seed_writes_other_files(tmp_path):
    write_splits(tmp_path / "a", n_train=20, n_validation=5, n_test=5, seed=1)
    write_splits(tmp_path / "b", n_train=20, n_validation=5, n_test=5, seed=2)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "b" / "train.jsonl").read_bytes()


def test_cli_writes_requested_counts(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "5", "--train", "12", "--validation", "3", "--test", "4"])
    printed = capsys.readouterr().out
    for split, n in {"train": 12, "validation": 3, "test": 4}.items():
        lines = (tmp_path / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == n
        assert re.search(rf"{split}\s+{n} rows", printed)


# --- schema and label values ---------------------------------------------------------------


def test_row_counts(splits):
    assert {split: len(rows) for split, rows in splits.items()} == SPLIT_SIZES


def test_rows_have_only_prompt_and_completion(all_rows):
    for row in all_rows:
        assert list(row) == ["prompt", "completion"]
        assert isinstance(row["prompt"], str) and row["prompt"].strip()


def test_completions_are_compact_json_with_allowed_values(all_rows):
    allowed = {"issue_type": ISSUE_TYPES, "priority": PRIORITIES, "product": PRODUCTS, "action": ACTIONS}
    for row in all_rows:
        answer = json.loads(row["completion"])
        assert tuple(answer) == FIELDS
        # Compact form: what the model is trained to emit, with no spaces to spend tokens on.
        assert row["completion"] == json.dumps(answer, separators=(",", ":"), ensure_ascii=False)
        assert answer["order_id"] is None or re.fullmatch(r"ORD-\d{6}", answer["order_id"])
        for field, values in allowed.items():
            assert answer[field] in values, (field, answer[field])


def test_order_id_is_written_in_the_email(all_rows):
    for row in all_rows:
        order_id = json.loads(row["completion"])["order_id"]
        if order_id is None:
            continue
        digits = order_id.removeprefix("ORD-")
        # One of the surface forms, whatever the case.
        form = rf"(?:ord-|order #|order no\. |order number |#){digits}\b"
        assert re.search(form, row["prompt"], re.IGNORECASE), row["prompt"]


def test_product_is_written_in_the_email(all_rows):
    for row in all_rows:
        product = json.loads(row["completion"])["product"]
        assert product in row["prompt"] or product.title() in row["prompt"], row["prompt"]


def test_some_emails_give_no_order_id(splits):
    share = sum(answer["order_id"] is None for answer in answers(splits["train"])) / SPLIT_SIZES["train"]
    assert 0.05 <= share <= 0.15


def test_every_label_value_appears_in_train(splits):
    train = answers(splits["train"])
    for field, values in {"issue_type": ISSUE_TYPES, "priority": PRIORITIES, "action": ACTIONS}.items():
        assert {answer[field] for answer in train} == set(values), field
    assert {answer["order_id"] is None for answer in train} == {True, False}


def test_action_is_not_a_function_of_issue_type(splits):
    actions_by_issue = defaultdict(set)
    for answer in answers(splits["train"]):
        actions_by_issue[answer["issue_type"]].add(answer["action"])
    assert all(len(actions) >= 2 for actions in actions_by_issue.values()), dict(actions_by_issue)


def test_product_catalog_is_unambiguous():
    assert 50 <= len(PRODUCTS) <= 70
    assert len(set(PRODUCTS)) == len(PRODUCTS)
    for product in PRODUCTS:
        assert product == product.lower().strip()
        # A name inside another name would make the mention ambiguous.
        assert not [other for other in PRODUCTS if other != product and product in other], product


# --- splits and lengths ------------------------------------------------------------------


def test_no_email_repeats_within_or_across_splits(all_rows):
    prompts = [row["prompt"] for row in all_rows]
    assert len(set(prompts)) == len(prompts)


def test_emails_are_short(all_rows):
    words = [len(row["prompt"].split()) for row in all_rows]
    assert min(words) >= MIN_WORDS and max(words) <= MAX_WORDS
    assert 35 <= statistics.mean(words) <= 60


# --- a regex and a keyword table do not solve it -----------------------------------------------

# The first ORD-/#/bare six-digit number in the email.
NAIVE_ORDER = re.compile(r"(?:ORD-|#|\b)(\d{6})\b", re.IGNORECASE)
NAIVE_ACTION = {
    "refund": "refund",
    "money back": "refund",
    "replace": "replacement",
    "new one": "replacement",
    "another one": "replacement",
    "exchange": "exchange",
    "swap": "exchange",
    "trade": "exchange",
    "cancel": "cancellation",
    "status": "status_update",
    "where": "status_update",
    "update": "status_update",
    "invoice": "invoice_correction",
    "bill": "invoice_correction",
    "fix": "troubleshooting",
    "working": "troubleshooting",
    "steps": "troubleshooting",
}
NAIVE_PRIORITY = {
    "urgent": "urgent",
    "today": "urgent",
    "tomorrow": "urgent",
    "as soon as": "high",
    "second time": "high",
    "quickly": "high",
    "no rush": "low",
    "no hurry": "low",
    "whenever": "low",
    "take your time": "low",
}


def first_keyword(text: str, table: dict[str, str], default: str | None = None) -> str | None:
    """The label of the keyword that occurs first in the text."""
    text = text.lower()
    hits = [(text.find(keyword), label) for keyword, label in table.items() if keyword in text]
    return min(hits)[1] if hits else default


def naive_answer(email: str) -> dict:
    match = NAIVE_ORDER.search(email)
    return {
        "order_id": f"ORD-{match.group(1)}" if match else None,
        "priority": first_keyword(email, NAIVE_PRIORITY, default="medium"),
        "product": first_keyword(email, {product: product for product in PRODUCTS}),
        "action": first_keyword(email, NAIVE_ACTION),
    }


def test_naive_baseline_does_not_solve_the_task(splits):
    rows = splits["train"]
    correct = defaultdict(int)
    for row, answer in zip(rows, answers(rows)):
        guess = naive_answer(row["prompt"])
        for field, value in guess.items():
            correct[field] += value == answer[field]
    accuracy = {field: count / len(rows) for field, count in correct.items()}
    # Distractor numbers (invoice, phone, previous order) come first or stand alone in enough emails.
    assert accuracy["order_id"] <= 0.95, accuracy
    # Negated actions and the action words in other sentences.
    assert accuracy["action"] <= 0.90, accuracy
    # "It's not urgent" is low priority; a keyword table says urgent.
    assert accuracy["priority"] <= 0.90, accuracy
    # A second product named before the subject.
    assert accuracy["product"] < 1.0, accuracy
    assert statistics.mean(accuracy.values()) < 0.95, accuracy


def test_distractor_numbers_fool_the_first_number_regex(splits):
    """The regex is wrong on at least 5% of emails, both with an order id and without one."""
    wrong_with_id = wrong_without_id = 0
    for row, answer in zip(splits["train"], answers(splits["train"])):
        guess = naive_answer(row["prompt"])["order_id"]
        if guess != answer["order_id"]:
            if answer["order_id"] is None:
                wrong_without_id += 1
            else:
                wrong_with_id += 1
    assert (wrong_with_id + wrong_without_id) / SPLIT_SIZES["train"] >= 0.05
    assert wrong_with_id > 0 and wrong_without_id > 0

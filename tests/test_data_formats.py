"""Rows of every supported shape become one canonical example; bad rows name their field."""

import pytest

from llm_lora.data_formats import RowError, detect_format, to_example


def test_prompt_completion():
    example = to_example({"prompt": "Hi", "completion": "Hello"})
    assert example.context == (("user", "Hi"),) and example.completion == "Hello" and example.system is None


def test_instruction_with_and_without_input():
    with_input = to_example({"instruction": "Translate.", "input": "Hallo", "output": "Hello"})
    assert with_input.context == (("user", "Translate.\n\nHallo"),) and with_input.completion == "Hello"
    without = to_example({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert without.context == (("user", "Say hi."),)


def test_messages_keep_system_and_earlier_turns():
    example = to_example(
        {
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "A"},
                {"role": "assistant", "content": "B"},
                {"role": "user", "content": "C"},
                {"role": "assistant", "content": "D"},
            ]
        }
    )
    assert example.system == "Be terse."
    assert example.context == (("user", "A"), ("assistant", "B"), ("user", "C"))
    assert example.completion == "D" and example.prompt == "C"


def test_column_mapping():
    example = to_example({"question": "Q?", "answer": "A."}, columns={"prompt": "question", "completion": "answer"})
    assert example.prompt == "Q?" and example.completion == "A."


def test_round_trip_through_rows():
    example = to_example({"prompt": "Hi", "completion": "Hello", "system": "S"}, source="a.jsonl:3")
    assert type(example).from_row(example.to_row()) == example


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "Hi"}, "missing field 'completion'"),
        ({"question": "Hi", "answer": "x"}, "cannot tell the format"),
        ({"prompt": "", "completion": "x"}, "field 'prompt' is empty"),
        ({"prompt": ["a"], "completion": "x"}, "field 'prompt' must be a string, got list"),
        ({"prompt": "Hi", "completion": {"label": 1}}, "field 'completion' must be a string, got dict"),
        ({"messages": "hi"}, "field 'messages' must be a non-empty list"),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]\.role: unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": None}]}, r"messages\[0\]\.content must be a string"),
        ({"messages": [{"role": "user", "content": "x"}]}, "must end with an assistant turn"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "need a user turn"),
        (
            {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},
                          {"role": "assistant", "content": "y"}]},
            "a system message may only come first",
        ),
        ({"instruction": "Do.", "output": None}, "missing field 'output'"),
        (["not", "a", "dict"], "expected an object, got list"),
    ],
)
def test_bad_rows_name_the_field(row, message):
    with pytest.raises(RowError, match=message):
        to_example(row)


def test_missing_mapped_column_named():
    with pytest.raises(RowError, match="missing column 'question'"):
        to_example({"prompt": "x", "completion": "y"}, columns={"prompt": "question"})


def test_explicit_format_overrides_detection():
    with pytest.raises(RowError, match="missing field 'messages'"):
        to_example({"prompt": "x", "completion": "y"}, data_format="messages")
    assert detect_format({"instruction": "a", "output": "b", "prompt": "c", "completion": "d"}) == "instruction"


def test_inference_rows_use_the_training_column_names_without_the_answer_column():
    """Unanswered rows in the training run's own column names (data.columns) are accepted for inference."""
    from llm_lora.data_formats import to_inference_input

    columns = {"prompt": "question", "completion": "answer"}
    assert to_inference_input({"question": "Q?"}, "auto", columns) == (None, (("user", "Q?"),))
    # A row that still carries its answer is answered afresh, from the same prompt.
    assert to_inference_input({"question": "Q?", "answer": "A."}, "auto", columns) == (None, (("user", "Q?"),))
    with pytest.raises(RowError, match="missing column 'question'"):
        to_inference_input({"prompt": "Q?"}, "auto", columns)
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert to_inference_input({"conv": conversation}, "auto", {"messages": "conv"}) == ("Be brief.", (("user", "Hi"),))
    instruction = {"task": "Sum", "numbers": "1 2"}
    assert to_inference_input(instruction, "instruction", {"instruction": "task", "input": "numbers", "output": "sum"}) == (
        None, (("user", "Sum\n\n1 2"),))

"""OpenAI's chat fine-tuning files read as OpenAI reads them: its rows pass, its checks refuse, its weights train."""

import copy
import json

import pytest

from llm_lora.config import DataConfig
from llm_lora.data_formats import RowError, to_example, turn_meta
from llm_lora.data_preparation import split_examples
from llm_lora.data_sources import DataError
from llm_lora.prompt_formatting import format_prompt, format_segments
from llm_lora.tokenization import IGNORE_INDEX, tokenize_examples
from llm_lora.tool_calls import calls_text, knows_tools, tools_text

SYSTEM = {"role": "system", "content": "You control a drone. Call a function for every request."}
TAKEOFF = {"type": "function", "function": {
    "name": "takeoff_drone", "description": "Initiate the drone's takeoff sequence.",
    "parameters": {"type": "object", "properties": {"altitude": {"type": "integer"}}, "required": ["altitude"]}}}
LAND = {"type": "function", "function": {
    "name": "land_drone", "description": "Land the drone.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string", "enum": ["current", "home_base"]},
                                                    "speed": {"type": "number"}}, "required": ["location"]}}}


def call(name, arguments, call_id="call_1"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


# Rows in the shapes OpenAI's cookbook and fine-tuning guide show as valid.
TOOL_ROW = {"messages": [SYSTEM, {"role": "user", "content": "Get the drone in the air, 100 m please."},
                         {"role": "assistant", "tool_calls": [call("takeoff_drone", {"altitude": 100})]}],
            "parallel_tool_calls": False, "tools": [TAKEOFF, LAND]}
RESULT_ROW = {"messages": [SYSTEM, {"role": "user", "content": "Land it here."},
                           {"role": "assistant", "tool_calls": [call("land_drone", {"location": "current"}, "c7")]},
                           {"role": "tool", "tool_call_id": "c7", "content": [{"type": "text", "text": "landed"}]},
                           {"role": "assistant", "content": "The drone has landed where it is."}],
              "tools": [TAKEOFF, LAND]}
WEIGHTED_ROW = {"messages": [
    {"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
    {"role": "user", "content": "What's the capital of France?"},
    {"role": "assistant", "content": "Paris", "weight": 0},
    {"role": "user", "content": "Can you be more sarcastic?"},
    {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.", "weight": 1}]}
VALID_ROWS = [
    {"messages": [{"role": "system", "content": "You are happy."}, {"role": "user", "content": "I fell off my bike."},
                  {"role": "assistant", "content": "Great exercise outdoors!"}]},
    {"messages": [{"role": "user", "content": "I lost my book."}, {"role": "assistant", "content": "Ebooks!"}]},
    {"messages": [{"role": "system", "content": "You are happy."}, {"role": "assistant", "content": "You're great!"}]},
    {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello", "name": "helper"}]},
    TOOL_ROW, RESULT_ROW, WEIGHTED_ROW,
    # Arguments written as a JSON string of a JSON object, as one of the cookbook's own drone rows has them.
    {**TOOL_ROW, "messages": [*TOOL_ROW["messages"][:2], {"role": "assistant", "tool_calls": [
        {"id": "call_id", "type": "function",
         "function": {"name": "land_drone", "arguments": json.dumps(json.dumps({"location": "current"}))}}]}]},
    # Legacy function calling: functions, function_call and a function message.
    {"messages": [SYSTEM, {"role": "user", "content": "Land it."},
                  {"role": "assistant", "content": None, "function_call": {"name": "land_drone",
                                                                           "arguments": '{"location": "current"}'}},
                  {"role": "function", "name": "land_drone", "content": "landed"},
                  {"role": "assistant", "content": "Landed."}],
     "functions": [LAND["function"]]},
]


@pytest.mark.parametrize("row", VALID_ROWS, ids=range(len(VALID_ROWS)))
def test_rows_openai_shows_as_valid_are_read(row):
    example = to_example(copy.deepcopy(row))
    assert example.completion
    assert to_example(example.to_messages_row()) == example  # written back, read back the same


def test_a_function_calling_row_keeps_its_tools_calls_and_results():
    example = to_example(RESULT_ROW)
    assert json.loads(example.tools) == [TAKEOFF, LAND] and example.completion == "The drone has landed where it is."
    user, made, result = example.context
    assert turn_meta(made)["tool_calls"] == [{"id": "c7", "name": "land_drone", "arguments": {"location": "current"}}]
    assert result[0] == "tool" and result[1] == "landed" and turn_meta(result) == {"tool_call_id": "c7", "name": "land_drone"}
    answer = to_example(TOOL_ROW)
    assert answer.answer == ("assistant", "", answer.answer_meta) and answer.parallel_tool_calls is False
    assert answer.completion == calls_text([{"name": "takeoff_drone", "arguments": {"altitude": 100}}])


def test_the_legacy_form_is_the_current_one():
    legacy = to_example(VALID_ROWS[-1])
    current = to_example({"messages": [SYSTEM, {"role": "user", "content": "Land it."},
                                       {"role": "assistant", "tool_calls": [call("land_drone", {"location": "current"},
                                                                                 "call_2")]},
                                       {"role": "tool", "tool_call_id": "call_2", "content": "landed"},
                                       {"role": "assistant", "content": "Landed."}], "tools": [LAND]})
    assert legacy == current


def _break(row, path, value):
    """A copy of a row with one value replaced (a path of keys and indexes; value None deletes it)."""
    row = copy.deepcopy(row)
    target = row
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return row


# (id, row, the reason's text). Each is OpenAI's own format check, or a reason its API gives for refusing a file.
BAD_ROWS = [
    ("unknown-message-key", _break(TOOL_ROW, ["messages", 1, "mood"], "glad"), r"messages\[1\]: unknown key 'mood'"),
    ("unknown-role", _break(TOOL_ROW, ["messages", 1, "role"], "robot"), r"messages\[1\]\.role: unknown role 'robot'"),
    ("no-content-no-calls", _break(TOOL_ROW, ["messages", 2, "tool_calls"], None),
     r"messages\[2\]: an assistant message needs content or tool_calls"),
    ("arguments-not-json", _break(TOOL_ROW, ["messages", 2, "tool_calls", 0, "function", "arguments"], "{altitude: 1}"),
     r"messages\[2\]\.tool_calls\[0\]\.function\.arguments is not valid JSON: Expecting property name"),
    ("arguments-an-object", _break(TOOL_ROW, ["messages", 2, "tool_calls", 0, "function", "arguments"], {"altitude": 1}),
     r"arguments must be a JSON string .* got dict"),
    ("arguments-a-list", _break(TOOL_ROW, ["messages", 2, "tool_calls", 0, "function", "arguments"], "[1]"),
     r"arguments must be a JSON object, got list"),
    ("call-without-id", _break(TOOL_ROW, ["messages", 2, "tool_calls", 0, "id"], None), r"tool_calls\[0\]\.id must be"),
    ("tool-answers-no-call", _break(RESULT_ROW, ["messages", 3, "tool_call_id"], "call_9"),
     r"messages\[3\]\.tool_call_id 'call_9' answers no earlier tool call"),
    ("tool-without-call-id", _break(RESULT_ROW, ["messages", 3, "tool_call_id"], None),
     r"messages\[3\]\.tool_call_id must name the call"),
    ("no-final-answer", {"messages": RESULT_ROW["messages"][:4], "tools": [TAKEOFF, LAND]},
     "messages must end with an assistant turn"),
    ("weight-two", _break(WEIGHTED_ROW, ["messages", 2, "weight"], 2), r"messages\[2\]\.weight must be 0 or 1, got 2"),
    ("weight-true", _break(WEIGHTED_ROW, ["messages", 2, "weight"], True), r"weight must be 0 or 1, got True"),
    ("weight-on-user", _break(WEIGHTED_ROW, ["messages", 1, "weight"], 1), r"messages\[1\]\.weight is only for assistant"),
    ("schema-bad-type", _break(TOOL_ROW, ["tools", 0, "function", "parameters", "properties", "altitude", "type"], "int"),
     r"tools\[0\]\.function\.parameters\.properties\.altitude\.type is not valid JSON Schema"),
    ("schema-not-object", _break(TOOL_ROW, ["tools", 0, "function", "parameters"], {"type": "array"}),
     r"tools\[0\]\.function\.parameters\.type must be 'object'"),
    ("tool-not-a-function", _break(TOOL_ROW, ["tools", 1, "type"], "retrieval"), r"tools\[1\] must be"),
    ("function-twice", _break(TOOL_ROW, ["tools", 1], TAKEOFF), r"tools\[1\]\.function\.name: 'takeoff_drone' is defined twice"),
    ("undefined-function", _break(TOOL_ROW, ["messages", 2, "tool_calls", 0, "function", "name"], "fly"),
     r"calls 'fly', which the row's tools do not define"),
    ("parallel-false-two-calls", _break(TOOL_ROW, ["messages", 2, "tool_calls"],
                                        [call("takeoff_drone", {"altitude": 1}), call("land_drone", {"location": "current"}, "c2")]),
     r"messages\[2\] makes 2 calls but parallel_tool_calls is false"),
    ("parallel-not-bool", _break(TOOL_ROW, ["parallel_tool_calls"], "no"), r"parallel_tool_calls' must be true or false"),
    ("image-part", _break(TOOL_ROW, ["messages", 1, "content"], [{"type": "image_url", "image_url": {"url": "x"}}]),
     r"messages\[1\]\.content\[0\]: only text parts are trained here \(got 'image_url'\)"),
    ("tools-and-functions", {**TOOL_ROW, "functions": [LAND["function"]]}, "give tools or the legacy functions, not both"),
    ("dpo-row", {"input": {"messages": [{"role": "user", "content": "Hi"}]},
                 "preferred_output": [{"role": "assistant", "content": "Hello!"}],
                 "non_preferred_output": [{"role": "assistant", "content": "What."}]},
     r"a preference pair \(OpenAI's DPO format: preferred_output, non_preferred_output\): preference tuning \(DPO\) is not"
     r" available yet"),
    ("trl-preference-row", {"prompt": "Hi", "chosen": "Hello!", "rejected": "What."}, r"TRL's preference format"),
]


@pytest.mark.parametrize("name, row, reason", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_openai_format_checks_refuse_with_the_field(name, row, reason):
    with pytest.raises(RowError, match=reason):
        to_example(row)


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_every_refused_row_is_named_by_file_and_line(tmp_path):
    """on_bad_rows: error stops at the first bad row in one line; drop lists each with its file, line and reason."""
    good = [
        {**TOOL_ROW, "messages": [SYSTEM, {"role": "user", "content": f"Take off to {i} m."},
                                  {"role": "assistant", "tool_calls": [call("takeoff_drone", {"altitude": i})]}]}
        for i in range(6)]
    bad = [row for _, row, _ in BAD_ROWS]
    train = _write(tmp_path / "train.jsonl", [*good, *bad])
    data = DataConfig(train_file=train, on_bad_rows="error")
    with pytest.raises(DataError) as error:
        split_examples(data)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{train}:7: messages[1]: unknown key 'mood'"), message
    assert f"({len(bad) - 1} more bad rows; data.on_bad_rows: drop skips and lists them)" in message
    dropped = split_examples(DataConfig(train_file=train, on_bad_rows="drop")).dropped
    assert [entry["source"] for entry in dropped] == [f"{train}:{7 + i}" for i in range(len(bad))]
    for entry, (_, _, reason) in zip(dropped, BAD_ROWS):
        assert __import__("re").search(reason, entry["reason"]), (entry, reason)


def _trained_pieces(tokenizer, row):
    """Each run of consecutive trained tokens, decoded, and the trained ids."""
    pieces, current, ids = [], [], []
    for token, label in zip(row["input_ids"], row["labels"]):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
            ids.append(token)
        elif current:
            pieces.append(tokenizer.decode(current))
            current = []
    if current:
        pieces.append(tokenizer.decode(current))
    return pieces, ids


def openai_trains(row):
    """OpenAI's rule, written out on the raw row: every assistant message whose weight is 1 (the default),
    as its text then its calls in the fallback rendering."""
    trained = []
    for message in row["messages"]:
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                 for c in message.get("tool_calls") or []]
        trained.append((calls_text(calls, message.get("content") or "") if calls else message["content"]) + "<|im_end|>")
    return trained


WEIGHTED_TOOL_ROW = {"messages": [
    SYSTEM, {"role": "user", "content": "Land it."},
    {"role": "assistant", "content": "Landing at home base.", "weight": 0},
    {"role": "user", "content": "No, here."},
    {"role": "assistant", "tool_calls": [call("land_drone", {"location": "current"}, "c1")]},
    {"role": "tool", "tool_call_id": "c1", "content": "landed"},
    {"role": "assistant", "content": "Landed where it is.", "weight": 0}], "tools": [TAKEOFF, LAND]}


@pytest.mark.parametrize("row", [WEIGHTED_ROW, WEIGHTED_TOOL_ROW, RESULT_ROW], ids=["no-tools", "tools", "no-weights"])
@pytest.mark.parametrize("loss_on", ["auto", "completion", "all"])
def test_weight_0_turns_carry_no_loss_and_weight_1_turns_do_token_by_token(tokenizer, row, loss_on):
    """What is trained is exactly OpenAI's rule on the same row: whatever loss_on says when the row has weights."""
    split = tokenize_examples([to_example(row)], tokenizer, None, None, loss_on=loss_on)
    prepared = split.rows[0]
    pieces, ids = _trained_pieces(tokenizer, prepared)
    weighted = row is not RESULT_ROW
    if weighted or loss_on == "auto":
        expected = openai_trains(row)
        assert pieces == expected
        # Token by token: the trained ids are each trained turn's own tokens, in order.
        assert ids == [token for text in expected for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
        # A weight-0 turn's tokens are all in the input and none of them carries loss.
        for message in row["messages"]:
            if message.get("weight") == 0:
                start = tokenizer.decode(prepared["input_ids"]).find(message["content"])
                assert start > 0 and message["content"] + "<|im_end|>" not in pieces
    elif loss_on == "completion":
        assert pieces == [openai_trains(row)[-1]]
    assert split.weighted_rows == int(weighted)
    assert split.trained_turns == len(openai_trains(row)) if (weighted or loss_on != "completion") else 1


def test_a_row_whose_last_answer_has_weight_0_still_trains_its_earlier_turns(tokenizer):
    row = _break(WEIGHTED_ROW, ["messages", 2, "weight"], 1)
    row = _break(row, ["messages", 4, "weight"], 0)
    split = tokenize_examples([to_example(row)], tokenizer, None, None)
    assert _trained_pieces(tokenizer, split.rows[0])[0] == ["Paris<|im_end|>"] and not split.dropped
    nothing = _break(row, ["messages", 2, "weight"], 0)
    assert tokenize_examples([to_example(nothing)], tokenizer, None, None).dropped[0][1] == "no token carries loss"


def test_the_fallback_writes_tools_after_the_system_prompt_and_results_as_a_user_turn(tokenizer):
    assert not knows_tools(tokenizer)  # SmolLM2's template is plain ChatML
    example = to_example(RESULT_ROW)
    prompt = format_prompt(tokenizer, example.context, example.system, tools=example.tools)
    tools = tools_text([TAKEOFF, LAND])
    assert prompt.startswith(f"<|im_start|>system\n{SYSTEM['content']}\n\n{tools}<|im_end|>\n")
    assert '{"name":"takeoff_drone","description":"Initiate the drone\'s takeoff sequence.",' in tools
    assert prompt.endswith('<|im_start|>assistant\n<tool_call>{"name":"land_drone","arguments":{"location":"current"}}'
                           "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>landed</tool_response><|im_end|>\n"
                           "<|im_start|>assistant\n")
    # Without a system prompt the functions are the system message.
    alone = format_prompt(tokenizer, example.context, None, tools=example.tools)
    assert alone.startswith(f"<|im_start|>system\n{tools}<|im_end|>")


# A tools-aware chat template in the Hermes layout, as models trained for tool use ship one.
HERMES = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0].role == 'system' %}{{- messages[0].content }}"
    "{%- endif %}{{- '\\n# Tools\\n<tools>' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant' }}{%- if message.content %}"
    "{{- '\\n' + message.content }}{%- endif %}{%- for tc in message.tool_calls %}{%- set tc = tc.function %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + tc.name + '\", \"arguments\": ' + (tc.arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture()
def tools_tokenizer(tokenizer):
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = HERMES
    return clone


def test_a_template_that_knows_tools_renders_them_itself(tools_tokenizer, tokenizer):
    assert knows_tools(tools_tokenizer)
    example = to_example(RESULT_ROW)
    prompt = format_prompt(tools_tokenizer, example.context, example.system, tools=example.tools)
    assert prompt.startswith("<|im_start|>system\n" + SYSTEM["content"] + "\n# Tools\n<tools>\n" + json.dumps(TAKEOFF))
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "land_drone", "arguments": {"location": "current"}}\n</tool_call>' \
        in prompt and "<tool_response>\nlanded\n</tool_response>" in prompt
    # Trained: the template's own rendering of the call, and the final text.
    split = tokenize_examples([example], tools_tokenizer, None, None)
    assert _trained_pieces(tools_tokenizer, split.rows[0])[0] == [
        '<tool_call>\n{"name": "land_drone", "arguments": {"location": "current"}}\n</tool_call><|im_end|>',
        "The drone has landed where it is.<|im_end|>"]
    # The pieces add up to the prompt of the whole conversation (nothing rendered twice or lost).
    segments = format_segments(tools_tokenizer, example.context, example.answer, example.system, tools=example.tools)
    assert "".join(text for text, _ in segments[:-1]) == prompt

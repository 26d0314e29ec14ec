"""OpenAI's chat fine-tuning rows, read and checked as OpenAI reads them.

A row is `{"messages": [...], "tools": [...], "parallel_tool_calls": bool}`, or the legacy
`{"messages": [...], "functions": [...]}`. Messages have the roles system (and `developer`,
which OpenAI treats as system), user, assistant and tool (legacy: function). `content` is a
string or a list of text parts (joined with newlines); an assistant message may instead (or
as well) carry `tool_calls` (legacy: `function_call`), whose arguments are JSON text; a tool
message answers an earlier call by its `tool_call_id`. `weight` 0 or 1 on an assistant
message says whether it is trained (OpenAI trains every assistant message whose weight is 1,
the default). The legacy form is converted to the current one (a `function` message answers
the latest call of its name).

Each check refuses the row with one reason naming the field, as OpenAI's format checks do:
unknown keys and roles, missing content, arguments that are not JSON, a tool message that
answers no call, a row without a final assistant answer, weights other than 0 and 1, tools
that are not functions with JSON Schema parameters.
"""

from __future__ import annotations

import json

from llm_lora.data_formats import Example, RowError, Turn, _as_text, make_turn, turn_calls, turn_meta
from llm_lora.tool_calls import calls_text

MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _content(message: dict, where: str, required: bool) -> str:
    """A message's text: a string, or the text parts of a list joined with newlines."""
    content = _as_text(message.get("content"))
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(f"{where}.content[{index}]: only text parts are trained here (got {kind!r})")
            texts.append(part["text"])
        content = "\n".join(texts)
    if content is None and not required:
        return ""
    if not isinstance(content, str):
        raise RowError(f"{where}.content must be a string or a list of text parts, got {type(content).__name__}")
    if required and not content.strip():
        raise RowError(f"{where}.content is empty")
    return content


def _arguments(value: object, where: str) -> dict:
    """A call's arguments: JSON text of an object (a JSON string of one, as some files double-encode, is read too)."""
    if not isinstance(value, str):
        raise RowError(f"{where} must be a JSON string (OpenAI's format writes arguments as text), got {type(value).__name__}")
    parsed: object = value
    for _ in range(2):
        try:
            parsed = json.loads(parsed)
        except ValueError as error:
            raise RowError(f"{where} is not valid JSON: {error}") from None
        if not isinstance(parsed, str):
            break
    if not isinstance(parsed, dict):
        raise RowError(f"{where} must be a JSON object, got {type(parsed).__name__}")
    return parsed


def _call(call: object, where: str) -> dict:
    if not isinstance(call, dict):
        raise RowError(f"{where} must be an object with id, type and function")
    unknown = sorted(set(call) - {"id", "type", "function"})
    if unknown:
        raise RowError(f"{where}: unknown key {unknown[0]!r} (a call has id, type and function)")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise RowError(f"{where}.id must be a non-empty string")
    if call.get("type", "function") != "function":
        raise RowError(f"{where}.type must be 'function', got {call.get('type')!r}")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RowError(f"{where}.function.name must be a non-empty string")
    unknown = sorted(set(function) - {"name", "arguments"})
    if unknown:
        raise RowError(f"{where}.function: unknown key {unknown[0]!r} (a function call has name and arguments)")
    return {"id": call["id"], "name": function["name"],
            "arguments": _arguments(function.get("arguments"), f"{where}.function.arguments")}


def _tools(row: dict) -> list[dict] | None:
    """The row's functions in the current `tools` form (legacy `functions` converted), each checked."""
    if "tools" in row and "functions" in row:
        raise RowError("give tools or the legacy functions, not both")
    legacy = "functions" in row
    tools = row.get("functions" if legacy else "tools")
    if tools is None:
        return None
    key = "functions" if legacy else "tools"
    if not isinstance(tools, list) or not tools:
        raise RowError(f"field {key!r} must be a non-empty list")
    out, names = [], set()
    for index, tool in enumerate(tools):
        where = f"{key}[{index}]"
        if legacy:
            tool = {"type": "function", "function": tool}
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise RowError(f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}")
        function = tool["function"]
        prefix = where if legacy else f"{where}.function"
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise RowError(f"{prefix}.name must be a non-empty string")
        if name in names:
            raise RowError(f"{prefix}.name: {name!r} is defined twice")
        names.add(name)
        unknown = sorted(set(function) - {"name", "description", "parameters", "strict"})
        if unknown:
            raise RowError(f"{prefix}: unknown key {unknown[0]!r} (a function has name, description, parameters, strict)")
        if "description" in function and not isinstance(function["description"], str):
            raise RowError(f"{prefix}.description must be a string")
        if "parameters" in function:
            _check_schema(function["parameters"], f"{prefix}.parameters")
        out.append({"type": "function", "function": function})
    return out


def _check_schema(schema: object, where: str) -> None:
    """A function's parameters must be a JSON Schema of an object (OpenAI's rule)."""
    import jsonschema

    if not isinstance(schema, dict):
        raise RowError(f"{where} must be a JSON Schema object, got {type(schema).__name__}")
    if schema.get("type", "object") != "object":
        raise RowError(f"{where}.type must be 'object' (a function takes named arguments), got {schema.get('type')!r}")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        path = "".join(f"[{part!r}]" if isinstance(part, int) else f".{part}" for part in error.path)
        raise RowError(f"{where}{path} is not valid JSON Schema: {error.message}") from None


def _messages(messages: object, tools: list[dict] | None, parallel: bool | None) -> tuple[str | None, list[Turn]]:
    """The system prompt and every turn of a row's messages, each message checked."""
    if not isinstance(messages, list) or not messages:
        raise RowError("field 'messages' must be a non-empty list")
    names = {tool["function"]["name"] for tool in tools} if tools else None
    system = None
    turns: list[Turn] = []
    open_calls: dict[str, str] = {}  # call id -> function name, for calls no tool message has answered yet
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RowError(f"{where} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise RowError(f"{where}.role: unknown role {role!r} (expected one of system, developer, user,"
                           " assistant, tool)")
        unknown = sorted(set(message) - set(MESSAGE_KEYS))
        if unknown:
            raise RowError(f"{where}: unknown key {unknown[0]!r} (a message has {', '.join(MESSAGE_KEYS)})")
        for key in ("tool_calls", "function_call", "weight"):
            if key in message and role != "assistant":
                raise RowError(f"{where}.{key} is only for assistant messages")
        if "tool_call_id" in message and role != "tool":
            raise RowError(f"{where}.tool_call_id is only for tool messages")
        name = message.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise RowError(f"{where}.name must be a non-empty string")
        if role in ("system", "developer"):
            if turns or system is not None:
                raise RowError(f"{where}: a system message may only come first")
            system = _content(message, where, required=True)
            continue
        if role == "user":
            turns.append(make_turn("user", _content(message, where, required=True), name=name))
            continue
        if role in ("tool", "function"):
            turns.append(_answering_turn(message, where, role, open_calls))
            continue
        turns.append(_assistant_turn(message, index, names, parallel, open_calls))
    if not turns or turns[-1][0] != "assistant":
        raise RowError("messages must end with an assistant turn (the answer to train on)")
    if system is None and not any(turn[0] in ("user", "tool") for turn in turns[:-1]):
        raise RowError("messages need a user turn (or a system message) before the final assistant turn")
    return system, turns


def _assistant_turn(message: dict, index: int, names: set[str] | None, parallel: bool | None,
                    open_calls: dict[str, str]) -> Turn:
    where = f"messages[{index}]"
    calls = message.get("tool_calls")
    if "function_call" in message:
        if calls is not None:
            raise RowError(f"{where}: give tool_calls or the legacy function_call, not both")
        legacy = message["function_call"]
        if not isinstance(legacy, dict):
            raise RowError(f"{where}.function_call must be an object with name and arguments")
        calls = [{"id": f"call_{index}", "type": "function", "function": legacy}]
        checked = [_call(calls[0], f"{where}.function_call")]
    elif calls is not None:
        if not isinstance(calls, list) or not calls:
            raise RowError(f"{where}.tool_calls must be a non-empty list")
        checked = [_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(calls)]
    else:
        checked = []
    for i, call in enumerate(checked):
        if names is not None and call["name"] not in names:
            raise RowError(f"{where}.tool_calls[{i}] calls {call['name']!r}, which the row's tools do not define")
        if call["id"] in open_calls:
            raise RowError(f"{where}.tool_calls[{i}].id {call['id']!r} is used twice")
    if len(checked) > 1 and parallel is False:
        raise RowError(f"{where} makes {len(checked)} calls but parallel_tool_calls is false")
    if not checked and message.get("content") in (None, "", []):
        raise RowError(f"{where}: an assistant message needs content or tool_calls")
    content = _content(message, where, required=not checked)
    weight = message.get("weight")
    if "weight" in message and (isinstance(weight, bool) or weight not in (0, 1)):
        raise RowError(f"{where}.weight must be 0 or 1, got {weight!r}")
    for call in checked:
        open_calls[call["id"]] = call["name"]
    return make_turn("assistant", content, tool_calls=checked or None,
                     weight=int(weight) if "weight" in message else None)


def _answering_turn(message: dict, where: str, role: str, open_calls: dict[str, str]) -> Turn:
    """A tool's result, answering one earlier call (a legacy function message: the latest call of its name)."""
    if role == "function":
        name = message.get("name")
        call_id = next((i for i, n in reversed(open_calls.items()) if n == name), None)
        if call_id is None:
            raise RowError(f"{where}: a function message answers the call of its name; no earlier call of {name!r}")
    else:
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise RowError(f"{where}.tool_call_id must name the call this result answers")
        if call_id not in open_calls:
            raise RowError(f"{where}.tool_call_id {call_id!r} answers no earlier tool call of this row")
    name = open_calls.pop(call_id)
    return make_turn("tool", _content(message, where, required=False), tool_call_id=call_id, name=name)


def read_chat_row(row: dict, source: str = "") -> Example:
    """One OpenAI chat fine-tuning row as a canonical example.

    Raises:
        RowError: The first check the row fails, naming the field.
    """
    if "messages" not in row:
        raise RowError("missing field 'messages'")
    parallel = row.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise RowError(f"field 'parallel_tool_calls' must be true or false, got {parallel!r}")
    tools = _tools(row)
    system, turns = _messages(row["messages"], tools, parallel)
    answer = turns[-1]
    meta = turn_meta(answer)
    completion = calls_text(meta["tool_calls"], answer[1]) if meta.get("tool_calls") else answer[1]
    return Example(
        context=tuple(turns[:-1]), completion=completion, system=system, source=source,
        answer_meta=answer[2] if len(answer) > 2 else "",
        tools=json.dumps(tools, ensure_ascii=False) if tools else "",
        parallel_tool_calls=parallel,
    )


def _message(turn: Turn) -> dict:
    role, content, meta = turn[0], turn[1], turn_meta(turn)
    message: dict = {"role": role}
    if content or not meta.get("tool_calls"):
        message["content"] = content
    if meta.get("tool_calls"):
        message["tool_calls"] = [{"id": call["id"], "type": "function",
                                  "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
                                 for call in turn_calls(turn)]
    if role == "tool":
        message["tool_call_id"] = meta.get("tool_call_id")
    elif meta.get("name") is not None:
        message["name"] = meta["name"]
    if "weight" in meta:
        message["weight"] = meta["weight"]
    return message


def messages_row(example: Example) -> dict:
    """An example as an OpenAI chat fine-tuning row: what `read_chat_row` reads back to the same example."""
    messages = [{"role": "system", "content": example.system}] if example.system is not None else []
    messages += [_message(turn) for turn in (*example.context, example.answer)]
    row: dict = {"messages": messages}
    if example.tools:
        row["tools"] = json.loads(example.tools)
    if example.parallel_tool_calls is not None:
        row["parallel_tool_calls"] = example.parallel_tool_calls
    return row


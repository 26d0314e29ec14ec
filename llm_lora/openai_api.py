"""OpenAI's chat completions API for a served version: the request schema, the answer and its streamed chunks.

Any OpenAI client can call the deployment: `messages` (with `tools`) become the row a training
run formats, read by the same reader as OpenAI training files (`llm_lora.openai_format`), and
the answer comes back as `choices[0].message`: its `content`, or its `tool_calls` when the
answer is a call. Decoding is greedy, as the version was evaluated: `temperature`, `top_p` and
other sampling fields are accepted and do not change the answer. `max_tokens` (or
`max_completion_tokens`) can lower the version's cap, not raise it.

- `tools` are rendered as the version was trained (the one formatting function);
  `tool_choice` is `auto`, `none` (the functions are left out of the prompt), `required` or a
  named function (the answer is started as a call, of that function, in the model's own
  rendering of calls); `parallel_tool_calls: false` keeps an answer's first call.
- `stream: true` answers in server-sent events of OpenAI's chunk format;
  `stream_options.include_usage` adds the usage chunk.
- `response_format` `json_object` or `json_schema` constrains decoding with llama.cpp's own
  grammar (the llama.cpp engine only).

Fields the deployment cannot honour are refused with a 422 naming them: `n` above 1, content
parts that are not text, `logprobs`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from typing_extensions import Annotated

from llm_lora.generation import Generation

MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 16_000  # about 4,000 tokens; the engine's context is checked when the prompt is tokenized
MAX_TOOLS = 128

MessageText = Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)]


class TextPart(BaseModel):
    """A content part; only text parts are understood."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: MessageText


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: MessageText


class ToolCall(BaseModel):
    """A call an earlier assistant message made (the conversation sent back with its results)."""

    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    # Clients send back the assistant messages they received, with keys such as refusal or annotations.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: MessageText | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def as_row_message(self) -> dict:
        """The message as a training file row has it: only the fields the training reader reads."""
        message: dict = {"role": self.role}
        if self.content is not None or not self.tool_calls:
            message["content"] = self.text
        if self.tool_calls:
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": call.function.arguments}} for call in self.tool_calls]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
        return message


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = "answer"
    schema_: dict = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("json_schema: required with type json_schema")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions, as OpenAI's client sends it."""

    model_config = ConfigDict(extra="allow")  # other OpenAI fields (temperature, user, seed, ...) are accepted

    model: str | None = None  # any name: the deployment serves one version and says which in the answer
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)  # one greedy answer; more would be copies of it
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None  # greedy answers carry no alternatives

    @field_validator("messages")
    @classmethod
    def _conversation(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        started = False
        for index, message in enumerate(messages):
            if message.role in ("system", "developer"):
                if started:
                    raise ValueError(f"message {index}: system messages go before the conversation")
            else:
                started = True
        if messages[-1].role not in ("user", "tool"):
            raise ValueError(f"the last message is the user's to answer, not the {messages[-1].role}'s (or a tool's"
                             " result)")
        return messages

    @model_validator(mode="after")
    def _consistent(self):
        if self.messages[-1].role == "user" and not self.messages[-1].text.strip():
            raise ValueError("messages: the last user message is empty")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice: needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in {
                tool.function.name for tool in self.tools}:
            raise ValueError(f"tool_choice: {self.tool_choice.function.name!r} is not one of the tools")
        if self.tools and self.tool_choice != "none" and self.json_mode:
            raise ValueError("response_format: give tools or a JSON response_format, not both")
        return self

    @property
    def cap(self) -> int | None:
        """The answer length this request asks for (None: the deployment's)."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def offered_tools(self) -> list[dict] | None:
        """The functions rendered in the prompt (none with tool_choice none)."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    @property
    def json_mode(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"

    @property
    def forced_function(self) -> str | None:
        """The function a named tool_choice asks for."""
        return self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None

    def row(self) -> tuple:
        """(source, system prompt, turns[, tools]) as a training run formats it; no system message: the version's.

        The conversation is read by the reader of OpenAI training files, so a request is checked as a
        training row is (a tool result must answer an earlier call, arguments must be JSON, ...).

        Raises:
            RowError: The conversation fails one of those checks.
        """
        from llm_lora.data_formats import read_inference_input

        system = [message.text for message in self.messages if message.role in ("system", "developer")]
        messages = [{"role": "system", "content": "\n\n".join(system)}] if system else []
        messages += [m.as_row_message() for m in self.messages if m.role not in ("system", "developer")]
        row: dict = {"messages": messages}
        if self.offered_tools:
            row["tools"] = self.offered_tools
        given = read_inference_input(row, "messages")
        base = ("chat", given.system, given.context)
        return (*base, given.tools) if given.tools else base


def json_schema_grammar(response_format: ResponseFormat) -> str:
    """llama.cpp's GBNF grammar for a JSON response format: any JSON object, or one that fits the schema.

    Raises:
        ValueError: A schema llama.cpp's converter cannot turn into a grammar.
    """
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if response_format.type == "json_object":
        return JSON_GBNF  # its root is an object
    try:
        return json_schema_to_gbnf(json.dumps(response_format.json_schema.schema_))
    except Exception as error:  # the converter raises several kinds for schemas it does not handle
        raise ValueError(f"response_format.json_schema.schema: {error}") from None


def _calls_message(calls: list[dict], content: str) -> dict:
    return {"role": "assistant", "content": content or None, "tool_calls": [
        {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
         "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
        for call in calls]}


def answer_message(generation: Generation, calls: list[dict] | None, content: str) -> tuple[dict, str]:
    """The assistant message and finish_reason of an answer: its calls when it makes any, else its text."""
    if calls:
        return _calls_message(calls, content), "tool_calls"
    return {"role": "assistant", "content": generation.text}, "length" if generation.hit_cap else "stop"


def usage(generation: Generation) -> dict:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.new_tokens,
            "total_tokens": generation.prompt_tokens + generation.new_tokens}


def chat_completion(version: str, generation: Generation, calls: list[dict] | None = None, content: str = "") -> dict:
    """The response body of a chat completion."""
    message, finish = answer_message(generation, calls, content)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": version,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage(generation),
    }


class ChunkWriter:
    """The server-sent events of one streamed answer, in OpenAI's chunk format."""

    def __init__(self, version: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.version = version

    def _event(self, choices: list[dict], **extra) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.version,
                "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    def delta(self, delta: dict, finish_reason: str | None = None) -> str:
        return self._event([{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}])

    def start(self) -> str:
        """The first chunk: the role."""
        return self.delta({"role": "assistant", "content": ""})

    def text(self, piece: str) -> str:
        return self.delta({"content": piece})

    def calls(self, calls: list[dict], content: str) -> str:
        """An answer's calls, whole (with their ids), as one delta."""
        message = _calls_message(calls, content)
        tool_calls = [{"index": index, **call} for index, call in enumerate(message["tool_calls"])]
        return self.delta({"tool_calls": tool_calls} if not content else {"content": content, "tool_calls": tool_calls})

    def finish(self, reason: str) -> str:
        return self.delta({}, reason)

    def usage(self, generation: Generation) -> str:
        return self._event([], usage=usage(generation))

    @staticmethod
    def done() -> str:
        return "data: [DONE]\n\n"

    @staticmethod
    def error(message: str, kind: str) -> str:
        return f"data: {json.dumps(error_body(message, kind))}\n\n"


def error_body(message: str, kind: str, code: str | None = None) -> dict:
    """An error as OpenAI's API shapes it (its clients read `error.message`)."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}

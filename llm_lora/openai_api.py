"""OpenAI's chat completions API (non-streaming) for a served version: the request schema and the response.

Any OpenAI client can call the deployment: `messages` become the row a training run
formats (system messages first, then user and assistant turns ending with a user turn),
and the answer comes back as `choices[0].message.content`. Decoding is greedy, as the
version was evaluated: `temperature`, `top_p` and other sampling fields are accepted and
do not change the answer. `max_tokens` (or `max_completion_tokens`) can lower the
version's cap, not raise it. Fields that the deployment cannot honour are refused with a
422 naming them: `stream: true`, `n` above 1, tools.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from typing_extensions import Annotated

from llm_lora.generation import Generation

MAX_MESSAGES = 64
MAX_MESSAGE_CHARS = 16_000  # about 4,000 tokens; the engine's context is checked when the prompt is tokenized

MessageText = Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)]


class TextPart(BaseModel):
    """A content part; only text parts are understood."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: MessageText


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: MessageText | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions, as OpenAI's client sends it."""

    model_config = ConfigDict(extra="allow")  # other OpenAI fields (temperature, user, seed, ...) are accepted

    model: str | None = None  # any name: the deployment serves one version and says which in the answer
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)  # one greedy answer; more would be copies of it
    stream: Literal[False] | None = None  # whole answers only
    tools: None = None  # no tool calls: the model was trained to answer, not to call

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
        if messages[-1].role != "user":
            raise ValueError(f"the last message is the user's to answer, not the {messages[-1].role}'s")
        return messages

    @model_validator(mode="after")
    def _text_present(self):
        if not self.messages[-1].text.strip():
            raise ValueError("messages: the last user message is empty")
        return self

    @property
    def cap(self) -> int | None:
        """The answer length this request asks for (None: the deployment's)."""
        return self.max_completion_tokens or self.max_tokens

    def row(self) -> tuple[str, str | None, tuple]:
        """(source, system prompt, turns) as a training run formats it; no system message: the version's."""
        system = [message.text for message in self.messages if message.role in ("system", "developer")]
        turns = tuple((message.role, message.text) for message in self.messages
                      if message.role not in ("system", "developer"))
        return "chat", "\n\n".join(system) if system else None, turns


def chat_completion(version: str, generation: Generation) -> dict:
    """The response body of a chat completion."""
    completion_tokens = generation.new_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": version,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": generation.text},
            "finish_reason": "length" if generation.hit_cap else "stop",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": generation.prompt_tokens + completion_tokens,
        },
    }


def error_body(message: str, kind: str, code: str | None = None) -> dict:
    """An error as OpenAI's API shapes it (its clients read `error.message`)."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}

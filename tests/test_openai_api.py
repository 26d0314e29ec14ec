"""The OpenAI chat completions schema of the deployment: messages to the row a training run formats."""

import pytest
from pydantic import ValidationError

from llm_lora.generation import Generation
from llm_lora.openai_api import ChatCompletionRequest, chat_completion


def test_messages_become_a_row_with_the_system_prompt_and_turns():
    request = ChatCompletionRequest.model_validate({"model": "anything", "temperature": 0.7, "messages": [
        {"role": "system", "content": "Extract JSON."},
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "{}"},
        {"role": "user", "content": [{"type": "text", "text": "order "}, {"type": "text", "text": "ORD-1"}]},
    ], "max_tokens": 20})
    assert request.row() == ("chat", "Extract JSON.", (("user", "first"), ("assistant", "{}"), ("user", "order ORD-1")))
    assert request.cap == 20
    # No system message: the version's own system prompt applies (None lets the formatter use it).
    plain = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}]})
    assert plain.row() == ("chat", None, (("user", "hi"),)) and plain.cap is None
    assert ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "max_completion_tokens": 9}).cap == 9


@pytest.mark.parametrize("body, field, message", [
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages",
     "the last message is the user's to answer, not the assistant's"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                   {"role": "user", "content": "b"}]}, "messages", "message 1: system messages go before"),
    ({"messages": [{"role": "robot", "content": "a"}]}, "messages.0.role", "Input should be 'system'"),
    ({"messages": [{"role": "user", "content": "   "}]}, "", "the last user message is empty"),
    ({"messages": [{"role": "user", "content": "a"}], "stream": "sometimes"}, "stream", "Input should be a valid boolean"),
    ({"messages": [{"role": "user", "content": "a"}], "n": 2}, "n", "less than or equal to 1"),
    ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"messages": [{"role": "user", "content": "a"}], "tools": [{"type": "function"}]}, "tools.0.function", "Field required"),
    ({"messages": [{"role": "user", "content": "a"}], "tool_choice": "required"}, "", "tool_choice: needs tools"),
    ({"messages": [{"role": "user", "content": "a"}], "response_format": {"type": "json_schema"}}, "response_format",
     "json_schema: required with type json_schema"),
    ({"messages": [{"role": "user", "content": "a"}], "logprobs": True}, "logprobs", "Input should be False"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages.0.content",
     "Input should be 'text'"),
])
def test_requests_the_deployment_cannot_honour_name_the_field(body, field, message):
    with pytest.raises(ValidationError) as error:
        ChatCompletionRequest.model_validate(body)
    found = [(".".join(str(part) for part in e["loc"]), e["msg"]) for e in error.value.errors()]
    assert any(loc.startswith(field) and message in msg for loc, msg in found), found


def test_the_response_is_openai_shaped():
    body = chat_completion("m 3 (production)", Generation(text='{"a": 1}', new_tokens=7, prompt_tokens=40,
                                                          latency_s=0.2))
    assert body["object"] == "chat.completion" and body["model"] == "m 3 (production)"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": '{"a": 1}'},
                                "finish_reason": "stop", "logprobs": None}]
    assert body["usage"] == {"prompt_tokens": 40, "completion_tokens": 7, "total_tokens": 47}
    cut = chat_completion("m", Generation(text="{", new_tokens=8, prompt_tokens=4, latency_s=0.1, hit_cap=True))
    assert cut["choices"][0]["finish_reason"] == "length"


def test_tools_and_a_tool_result_become_the_row_training_formats():
    """The conversation is read by the training files' reader: the prompt is the one a tools row of the same
    conversation was trained on."""
    from llm_lora.data_formats import to_example

    tool = {"type": "function", "function": {"name": "track", "parameters": {
        "type": "object", "properties": {"number": {"type": "string"}}, "required": ["number"]}}}
    call = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"number": "1Z9"}'}}
    messages = [{"role": "system", "content": "Shop assistant."}, {"role": "user", "content": "Where is 1Z9?"},
                {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None, "annotations": []},
                {"role": "tool", "tool_call_id": "call_1", "content": "shipped"}]
    request = ChatCompletionRequest.model_validate({"messages": messages, "tools": [tool]})
    source, system, turns, tools = request.row()
    trained = to_example({"messages": [*messages[:2], {"role": "assistant", "tool_calls": [call]}, messages[3],
                                       {"role": "assistant", "content": "It has shipped."}], "tools": [tool]})
    assert (system, turns, tools) == (trained.system, trained.context, trained.tools)
    # tool_choice none: the functions stay out of the prompt.
    assert len(ChatCompletionRequest.model_validate({"messages": messages, "tools": [tool],
                                                     "tool_choice": "none"}).row()) == 3

"""The Ollama Modelfile formats prompts exactly as the tokenizer's chat template does."""

import copy
import re

import pytest

from llm_lora.ollama import modelfile, render_template
from llm_lora.prompt_formatting import end_of_turn, format_prompt

SYSTEM = "Extract order_id, issue_type, priority, product and action from the email as JSON."
CASES = [
    (SYSTEM, "Hello, order ORD-724652 arrived with a cracked screen."),
    ("Line one.\nLine two.\n", "First line\n\nSecond line after a blank one\n"),
    ("Réponds en français, s'il te plaît. 日本語も可。", "Où est ma commande ? 🚚 «urgent»"),
    ("Braces {{ stay }} literal.", 'JSON like {"a": {"b": 1}} and {{ .Prompt }}'),
    (None, "No system prompt: the template's default applies."),
    (None, "  leading and trailing spaces  "),
]
# Answers only user turns: the system prompt is lost.
NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}<|im_start|>user\n"
    "{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def template_of(text):
    return re.search(r'^TEMPLATE """(.*?)"""$', text, re.DOTALL | re.MULTILINE).group(1)


def stops_of(text):
    return re.findall(r'^PARAMETER stop "(.*)"$', text, re.MULTILINE)


@pytest.fixture(scope="module")
def plain(tokenizer):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = None
    return copied


def assert_round_trips(tokenizer, text):
    template = template_of(text)
    for system, prompt in CASES:
        expected = format_prompt(tokenizer, prompt, system)
        assert render_template(template, system, prompt) == expected
        assert render_template(template, system, prompt, "ANSWER") == expected + "ANSWER" + end_of_turn(tokenizer)


def test_template_renders_what_format_prompt_renders(tokenizer):
    assert_round_trips(tokenizer, modelfile(tokenizer, "model.gguf", SYSTEM))


def test_default_system_prompt_is_kept_for_requests_without_one(tokenizer):
    template = template_of(modelfile(tokenizer, "model.gguf", None))
    assert "You are a helpful AI assistant" in render_template(template, None, "hi")
    assert "You are a helpful AI assistant" not in render_template(template, SYSTEM, "hi")


def test_stop_tokens_are_the_end_of_turn_and_single_tokens(tokenizer):
    stops = stops_of(modelfile(tokenizer, "model.gguf", SYSTEM))
    expected = list(dict.fromkeys([end_of_turn(tokenizer), tokenizer.eos_token]))
    assert stops == expected
    for stop in stops:
        token_id = tokenizer.convert_tokens_to_ids(stop)
        assert token_id is not None and token_id != tokenizer.unk_token_id
        assert tokenizer.encode(stop, add_special_tokens=False) == [token_id]


def test_tokenizer_without_chat_template_uses_the_plain_template(plain):
    text = modelfile(plain, "model.gguf", SYSTEM)
    assert "### Input:" in template_of(text)
    assert_round_trips(plain, text)
    assert stops_of(text) == [plain.eos_token]


def test_literal_braces_in_the_chat_template_are_escaped(tokenizer):
    braces = copy.deepcopy(tokenizer)
    braces.chat_template = (
        "{% for message in messages %}{{ '{{' + message['role'] + '}} {' }}{{ message['content'] }}"
        "{{ '}}}' }}\n{% endfor %}{% if add_generation_prompt %}{{ '{{assistant}} {' }}{% endif %}"
    )
    text = modelfile(braces, "model.gguf", SYSTEM)
    assert '{{ "{{" }}system{{ "}}" }} {{ "{" }}{{ .System }}' in template_of(text)
    assert_round_trips(braces, text)


def test_template_that_drops_the_system_prompt_is_refused(tokenizer):
    dropping = copy.deepcopy(tokenizer)
    dropping.chat_template = NO_SYSTEM_TEMPLATE
    with pytest.raises(ValueError, match="cannot be written as an Ollama template") as error:
        modelfile(dropping, "model.gguf", SYSTEM)
    assert "\n" not in str(error.value)


def test_modelfile_lines(tokenizer):
    text = modelfile(tokenizer, "smollm2-lora.Q8_0.gguf", SYSTEM, num_ctx=2048)
    lines = text.splitlines()
    assert lines[0] == "FROM ./smollm2-lora.Q8_0.gguf"
    assert f'SYSTEM """{SYSTEM}"""' in lines
    assert "PARAMETER temperature 0" in lines
    assert "PARAMETER num_ctx 2048" in lines
    without = modelfile(tokenizer, "model.gguf", None)
    assert "SYSTEM" not in without and "num_ctx" not in without


def test_system_prompt_with_triple_quotes_is_refused(tokenizer):
    with pytest.raises(ValueError, match='"""'):
        modelfile(tokenizer, "model.gguf", 'Answer as JSON: """{"a": 1}"""')


def test_render_template_refuses_other_actions():
    for template in ["{{ .Messages }}", "{{- .Prompt }}", "{{ if .System }}a", "{{ if .Prompt }}a{{ end }}", "{{ end }}"]:
        with pytest.raises(ValueError):
            render_template(template, "s", "p")
    assert render_template('{{ "{{" }}x{{ "}}" }}', None, "p") == "{{x}}"


def test_bos_the_engine_adds_is_not_written_twice(tokenizer):
    """A GGUF whose metadata makes llama.cpp add BOS gets a template without the chat template's own BOS."""
    bos = tokenizer.bos_token
    expected = format_prompt(tokenizer, "Where is order 7?", "Extract JSON.")
    assert expected.startswith(bos)
    rendered = render_template(template_of(modelfile(tokenizer, "m.gguf", None, adds_bos=True)), "Extract JSON.",
                               "Where is order 7?")
    assert rendered == expected[len(bos):]
    kept = render_template(template_of(modelfile(tokenizer, "m.gguf", None)), "Extract JSON.", "Where is order 7?")
    assert kept == expected

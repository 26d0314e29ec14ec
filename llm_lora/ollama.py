"""An Ollama Modelfile for an exported GGUF that formats prompts as training did.

The TEMPLATE is read off `format_prompt` itself: the prompt is rendered with
marker strings in place of the system prompt and the input, and the text around
the markers becomes the literal text of a Go template in Ollama's legacy form
(`.System`, `.Prompt`, `.Response`). A one-turn request to Ollama then sees
byte for byte the prompt the evaluation scored. Ollama renders every turn of a
longer chat with the same template, so multi-turn chats match the chat template
only where it repeats itself turn by turn.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from llm_lora.prompt_formatting import PLAIN_TEMPLATE, end_of_turn, format_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# NUL cannot occur in real text, and no chat template rewrites it.
_SYSTEM = "\x00SYSTEM\x00"
_PROMPT = "\x00PROMPT\x00"
# Checked after building: content with edge whitespace and braces must pass through untouched.
_PROBES = [(" \n A system {{ x }} \n", " \n An input {{ .Prompt }} \n"), (None, "{ input }")]

_UNWRITABLE = "the chat template cannot be written as an Ollama template"
_ACTION = re.compile(r'\{\{ *("[^"\\]*"|[^"{}]*?) *\}\}')
# Runs of braces that Go would read as (part of) a delimiter; a lone "{" at the end
# of a piece would join the "{{" of the action that follows.
_BRACES = re.compile(r"\{\{+|\}\}+|\{\Z")


def _escape(piece: str) -> str:
    # Go template string actions print braces literally.
    return _BRACES.sub(lambda match: '{{ "' + match.group() + '" }}', piece)


def _check_writable(text: str, what: str) -> None:
    # Ollama's Modelfile parser ends a """ block at the first `"""` before a newline and drops
    # unprintable characters, so such text would silently change.
    if '"""' in text:
        raise ValueError(f'{what} contains """, which cannot be written in a Modelfile')
    if any(not (char.isprintable() or char in "\n\r\t") for char in text):
        raise ValueError(f"{what} contains unprintable characters, which a Modelfile drops")


def _template(tokenizer: PreTrainedTokenizerBase, plain_template: str, adds_bos: bool = False) -> str:
    with_system = format_prompt(tokenizer, _PROMPT, _SYSTEM, plain_template)
    without = format_prompt(tokenizer, _PROMPT, None, plain_template)
    bos = tokenizer.bos_token
    if adds_bos and bos and with_system.startswith(bos) and without.startswith(bos):
        # llama.cpp puts BOS before the rendered prompt itself: written here too, it would come twice.
        with_system, without = with_system[len(bos):], without[len(bos):]
    if (
        with_system.count(_SYSTEM) != 1
        or with_system.count(_PROMPT) != 1
        or with_system.find(_SYSTEM) > with_system.find(_PROMPT)
        or without.count(_PROMPT) != 1
        or _SYSTEM in without
    ):
        raise ValueError(f"{_UNWRITABLE}: it drops, repeats or reorders the system prompt or the input")
    before_system, rest = with_system.split(_SYSTEM)
    between, generation = rest.split(_PROMPT)
    default, generation_alone = without.split(_PROMPT)
    if generation != generation_alone:
        raise ValueError(f"{_UNWRITABLE}: the text after the input depends on the system prompt")
    head, between, default, generation, eot = map(
        _escape, (before_system, between, default, generation, end_of_turn(tokenizer))
    )
    template = (
        f"{{{{ if .System }}}}{head}{{{{ .System }}}}{between}{{{{ else }}}}{default}{{{{ end }}}}"
        f"{{{{ .Prompt }}}}{generation}{{{{ .Response }}}}{eot}"
    )
    for system, prompt in _PROBES:
        expected = format_prompt(tokenizer, prompt, system, plain_template)
        if adds_bos and bos and expected.startswith(bos):
            expected = expected[len(bos):]
        if render_template(template, system, prompt) != expected:
            raise ValueError(f"{_UNWRITABLE}: it changes the text of the system prompt or the input")
    return template


def _stop(token: str) -> str:
    # Ollama strips the outer quotes and keeps the rest as is: no escapes to write.
    if "\n" in token or "\r" in token or not token.isprintable():
        raise ValueError(f"stop token {token!r} cannot be written on a Modelfile line")
    return f'PARAMETER stop "{token}"'


def modelfile(
    tokenizer: PreTrainedTokenizerBase,
    gguf_name: str,
    system_prompt: str | None,
    plain_template: str = PLAIN_TEMPLATE,
    num_ctx: int | None = None,
    adds_bos: bool = False,
) -> str:
    """Render the Modelfile that serves a GGUF with the prompt layout it was trained on.

    Args:
        tokenizer: The model's tokenizer (its chat template decides the layout).
        gguf_name: File name of the GGUF, next to the Modelfile.
        system_prompt: Default system prompt of the served model; None keeps the
            chat template's own behaviour without one.
        plain_template: Layout for tokenizers without a chat template.
        num_ctx: Context length for Ollama; None keeps Ollama's default.
        adds_bos: The GGUF tells llama.cpp to put BOS before every prompt
            (`tokenizer.ggml.add_bos_token`): the template leaves it out.

    Returns:
        The Modelfile text.

    Raises:
        ValueError: The chat template cannot be written in Ollama's template
            language, or a text cannot be written in a Modelfile.
    """
    template = _template(tokenizer, plain_template, adds_bos)
    _check_writable(template, "the chat template")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system_prompt:
        _check_writable(system_prompt, "the system prompt")
        lines.append(f'SYSTEM """{system_prompt}"""')
    eot = end_of_turn(tokenizer)
    lines += [_stop(token) for token in dict.fromkeys([eot, tokenizer.eos_token]) if token]
    # Greedy decoding, as the evaluation scored the model.
    lines.append("PARAMETER temperature 0")
    if num_ctx is not None:
        lines.append(f"PARAMETER num_ctx {int(num_ctx)}")
    return "\n".join(lines) + "\n"


def _parse(template: str) -> list[tuple[str, str]]:
    nodes: list[tuple[str, str]] = []
    opened = ""  # the last of if/else inside an open {{ if }}
    position = 0
    while (start := template.find("{{", position)) != -1:
        nodes.append(("text", template[position:start]))
        match = _ACTION.match(template, start)
        if match is None:
            raise ValueError(f"unsupported template action at {template[start:start + 30]!r}")
        action = match.group(1)
        if action.startswith('"'):
            nodes.append(("text", action[1:-1]))
        elif action in (".System", ".Prompt", ".Response"):
            nodes.append(("value", action))
        elif action == "if .System" and not opened:
            opened = "if"
            nodes.append(("if", action))
        elif (action == "else" and opened == "if") or (action == "end" and opened):
            opened = "" if action == "end" else action
            nodes.append((action, action))
        else:
            raise ValueError(f"unsupported template action {{{{ {action} }}}}")
        position = match.end()
    if opened:
        raise ValueError("{{ if }} without {{ end }}")
    nodes.append(("text", template[position:]))
    return nodes


def render_template(template: str, system: str | None, prompt: str, response: str = "") -> str:
    """Render the Go-template subset that `modelfile` writes, as Ollama does.

    Supported: `{{ if .System }}...{{ else }}...{{ end }}` (not nested), the
    values `{{ .System }}`, `{{ .Prompt }}`, `{{ .Response }}`, and string
    literals such as `{{ "{{" }}`. An empty response renders the turn Ollama
    sends for generation: like Ollama, it cuts the template at `{{ .Response }}`.

    Args:
        template: The template text.
        system: The system prompt; None or "" takes the else branch.
        prompt: The user input.
        response: The assistant's answer, for a finished turn.

    Returns:
        The rendered text.

    Raises:
        ValueError: The template uses any other action.
    """
    values = {".System": system or "", ".Prompt": prompt, ".Response": response}
    out: list[str] = []
    showing = True
    for kind, value in _parse(template):
        if kind == "if":
            showing = bool(system)
        elif kind == "else":
            showing = not system
        elif kind == "end":
            showing = True
        elif not showing:
            continue
        elif kind == "text":
            out.append(value)
        elif value == ".Response" and not response:
            break
        else:
            out.append(values[value])
    return "".join(out)

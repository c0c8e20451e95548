"""Ollama's request options, keep-alive durations and prompt templates.

Options follow Ollama's api.Options: known names with fixed types; a value of
the wrong type is a 400, an unknown name is ignored (Ollama logs a warning).
"""

from __future__ import annotations

import re

# name -> (type, Ollama's default). num_ctx's default comes from OLLAMA_CONTEXT_LENGTH.
OPTION_TYPES: dict[str, tuple[type, object]] = {
    "num_ctx": (int, 4096),
    "num_predict": (int, -1),
    "num_keep": (int, 4),
    "seed": (int, -1),
    "top_k": (int, 40),
    "top_p": (float, 0.9),
    "min_p": (float, 0.0),
    "typical_p": (float, 1.0),
    "temperature": (float, 0.8),
    "repeat_penalty": (float, 1.1),
    "repeat_last_n": (int, 64),
    "presence_penalty": (float, 0.0),
    "frequency_penalty": (float, 0.0),
    "stop": (list, []),
    "num_batch": (int, 512),
    "num_thread": (int, 0),
    "num_gpu": (int, -1),
    "main_gpu": (int, 0),
    "use_mmap": (bool, True),
    "numa": (bool, False),
}

TYPE_NAMES = {int: "int", float: "float", list: "[]string", bool: "bool"}


class OptionError(ValueError):
    """A request option has a value Ollama would refuse (HTTP 400)."""


def coerce_option(name: str, value):
    kind, _default = OPTION_TYPES[name]
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if (kind is int and isinstance(value, int | float) and not isinstance(value, bool)
            and float(value).is_integer()):
        return int(value)
    if kind is list:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
    if kind is bool and isinstance(value, bool):
        return value
    raise OptionError(f"option {name!r} must be of type {TYPE_NAMES[kind]}")


def merge_options(default_ctx: int, *layers: dict | None) -> dict:
    """Ollama's defaults, then the model's parameters, then the request's options."""
    merged = {name: default for name, (_kind, default) in OPTION_TYPES.items()}
    merged["num_ctx"] = default_ctx
    for layer in layers:
        if layer is None:
            continue
        if not isinstance(layer, dict):
            raise OptionError("options must be a JSON object")
        for name, value in layer.items():
            if name in OPTION_TYPES:
                merged[name] = coerce_option(name, value)
    return merged


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value) -> float | None:
    """Seconds to keep a model loaded; None means forever (a negative value).

    Accepts what Ollama accepts: a number of seconds, or a Go duration string
    ("5m", "1h30m", "-1", "0").
    """
    if isinstance(value, bool):
        raise OptionError("keep_alive must be a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
                raise OptionError(f"time: invalid duration {value!r}") from None
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise OptionError("keep_alive must be a duration")
    return None if seconds < 0 else seconds


# --- prompt templates --------------------------------------------------------

PROMPT_ONLY_TEMPLATE = "{{ .Prompt }}"


class TemplateError(ValueError):
    """The stand-in cannot render this template (HTTP 500, as a template error in Ollama)."""


def render(template: str, messages: list[dict]) -> str:
    """Render messages with the model's template.

    Ollama executes Go templates. The stand-in renders the two families the lab
    uses and refuses anything else rather than guess:
      - Gemma turns (`<start_of_turn>`): system and user messages become user
        turns; the prompt ends with an open model turn unless the last message is
        the assistant's (then it is continued).
      - `{{ .Prompt }}` (Ollama's default for a model without a template):
        the contents, joined.
    """
    if "<start_of_turn>" in template:
        out = []
        for index, message in enumerate(messages):
            last = index == len(messages) - 1
            role, content = message.get("role"), message.get("content", "")
            if role in ("user", "system"):
                out.append(f"<start_of_turn>user\n{content}<end_of_turn>\n")
                if last:
                    out.append("<start_of_turn>model\n")
            elif role == "assistant":
                out.append(f"<start_of_turn>model\n{content}")
                if not last:
                    out.append("<end_of_turn>\n")
        return "".join(out)
    if template.strip() in ("", PROMPT_ONLY_TEMPLATE):
        return "\n\n".join(m.get("content", "") for m in messages if m.get("content"))
    raise TemplateError("template error: the Ollama stand-in renders only Gemma turn "
                        "templates and {{ .Prompt }}")

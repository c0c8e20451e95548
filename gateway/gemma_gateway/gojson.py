"""Request bodies read as Ollama's Go server reads them, then re-encoded.

Ollama decodes a body with Go's encoding/json into typed structs. Where Python's
json module and Go disagree, a check made on Python's reading could be bypassed
(``"IMAGES"`` is ``images`` to Go; one invalid UTF-8 byte makes Python refuse
what Go accepts). So the gateway reads bodies the Go way:

- invalid UTF-8 is replaced by U+FFFD, not refused;
- only the first JSON value counts (Go's json.Decoder stops there);
- NaN and Infinity are refused, as Go refuses them;
- an object key names a struct field when it equals the field's name under
  Go's case folding (ASCII case, and K/KELVIN SIGN, s/LONG S); when several keys
  name one field, the last wins — but a null leaves a string, number or boolean
  field as it was, and the entries of a repeated map (`options`) add up;
- nesting deeper than Python's recursion allows (about a thousand levels) is
  refused.

For the inference routes the gateway then forwards its own canonical encoding of
the fields it read (Go's names, Go's values), so the backend parses exactly what
was checked; keys Go would ignore are dropped. Strings are sent as ASCII JSON, so
a lone surrogate escape reaches Go as an escape (which Go replaces by U+FFFD).
"""

from __future__ import annotations

import json
from typing import Any


class BodyError(ValueError):
    """400: the body is not what the endpoint takes. The message says why."""


# Go folds a name rune by rune (encoding/json foldName: ASCII letters to upper case, other
# runes to the smallest of their Unicode simple-fold set). The field names here are ASCII,
# and the only non-ASCII runes whose set holds an ASCII letter are KELVIN SIGN (k) and
# LONG S (s). Python's str.upper() is wider (it makes DOTLESS I an I), so it is not used.
_GO_FOLD = {**{code: code - 32 for code in range(ord("a"), ord("z") + 1)},
            0x212A: ord("K"), 0x017F: ord("S")}


def go_fold(name: str) -> str:
    """A key folded as Go's encoding/json folds it, for comparing with ASCII field names."""
    return name.translate(_GO_FOLD)


class GoObject(dict):
    """A JSON object that remembers its keys in order, for Go's field matching."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)  # a plain view, for maps Go reads with exact keys
        self.pairs = pairs

    def field(self, name: str, default: Any = None) -> Any:
        """The value Go's decoder leaves in a pointer, slice, map or interface field `name`:
        the last match, a null included."""
        found = self.fields(name)
        return found[-1] if found else default

    def scalar(self, name: str, default: Any = None) -> Any:
        """The value Go's decoder leaves in a string, number or boolean field `name`: the
        last match that is not null (a null does not change such a field)."""
        found = [value for value in self.fields(name) if value is not None]
        return found[-1] if found else default

    def merged(self, name: str) -> Any:
        """A map field (`map[string]any`) as Go fills it from repeated keys: each object's
        entries added to the one before, a null emptying it, another type refused."""
        merged = None
        for value in self.fields(name):
            if value is None:
                merged = None
            elif isinstance(value, dict):
                merged = {**(merged or {}), **value}
            else:
                return value  # the caller refuses it: not an object
        return merged

    def fields(self, name: str) -> list:
        """Every value whose key is `name` to Go, exactly or folded: what a check must
        cover when Go may read the key as a map key (exact) or a field (folded)."""
        wanted = go_fold(name)
        return [value for key, value in self.pairs if key == name or go_fold(key) == wanted]


def _refuse_constant(name: str) -> Any:
    raise BodyError(f"invalid character '{name[0]}' looking for beginning of value")


_DECODER = json.JSONDecoder(object_pairs_hook=GoObject, parse_constant=_refuse_constant)


# Parsing is C code that holds the interpreter for its whole run: its cost grows with the
# number of values, not of bytes (30 million small numbers took 4 s here). No request to a
# model needs a million; a body with more is refused before it is parsed.
MAX_VALUES = 1_000_000


def parse(body: bytes, max_values: int = MAX_VALUES) -> Any:
    """The first JSON value of a body, read as Go reads it."""
    if body.count(b",") + body.count(b":") > max_values:
        raise BodyError(f"the body holds more than {max_values} JSON values")
    text = body.decode("utf-8", "replace").lstrip(" \t\r\n")
    if not text:
        raise BodyError("missing request body")
    try:
        value, _end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise BodyError(f"invalid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise BodyError("the JSON is nested too deeply") from None
    return value


def parse_object(body: bytes) -> GoObject:
    value = parse(body)
    if not isinstance(value, GoObject):
        raise BodyError("the body must be a JSON object")
    return value


# --- Ollama's generate and chat requests (api/types.go, v0.32.15) --------------------------

_STRING, _BOOL, _INT, _LIST, _OBJECT, _ANY = "string", "boolean", "integer", "array", "object", ""
GENERATE_FIELDS = {
    "model": _STRING, "prompt": _STRING, "suffix": _STRING, "system": _STRING,
    "template": _STRING, "context": _LIST, "stream": _BOOL, "raw": _BOOL, "format": _ANY,
    "keep_alive": _ANY, "images": _LIST, "options": _OBJECT, "think": _ANY,
    "truncate": _BOOL, "shift": _BOOL, "logprobs": _BOOL, "top_logprobs": _INT,
}
CHAT_FIELDS = {
    "model": _STRING, "messages": _LIST, "stream": _BOOL, "format": _ANY, "keep_alive": _ANY,
    "tools": _LIST, "options": _OBJECT, "think": _ANY, "truncate": _BOOL, "shift": _BOOL,
    "logprobs": _BOOL, "top_logprobs": _INT,
}
MESSAGE_FIELDS = {
    "role": _STRING, "content": _STRING, "thinking": _STRING, "images": _LIST,
    "tool_calls": _LIST, "tool_name": _STRING, "tool_call_id": _STRING,
}
_TYPES = {_STRING: str, _BOOL: bool, _LIST: list, _OBJECT: dict}


def _typed(where: str, name: str, kind: str, value: Any) -> Any:
    """Go's refusal of a value of the wrong JSON type, as a BodyError."""
    if value is None or kind == _ANY:
        return value
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise BodyError(f"{where}.{name} must be an integer")
        return int(value)
    if not isinstance(value, _TYPES[kind]) or (kind != _BOOL and isinstance(value, bool)):
        raise BodyError(f"{where}.{name} must be a JSON {kind}")
    return value


def _canonical(obj: GoObject, fields: dict[str, str], where: str) -> dict:
    out = {}
    for name, kind in fields.items():
        if kind in (_STRING, _BOOL, _INT):
            value = obj.scalar(name)
        elif kind == _OBJECT:
            value = obj.merged(name)
        else:
            value = obj.field(name)
        if value is not None:
            out[name] = _typed(where, name, kind, value)
    return out


def _strings(value: list, where: str) -> list:
    if not all(isinstance(item, str) for item in value):
        raise BodyError(f"{where} must be an array of base64 strings")
    return value


def canonical_generate(obj: GoObject) -> dict:
    """An /api/generate body with Go's names and values (what Ollama will read)."""
    out = _canonical(obj, GENERATE_FIELDS, "generate")
    if "images" in out:
        out["images"] = _strings(out["images"], "images")
    return out


def canonical_chat(obj: GoObject) -> dict:
    """An /api/chat body with Go's names and values; roles lower-cased as Ollama does."""
    out = _canonical(obj, CHAT_FIELDS, "chat")
    messages = []
    for number, message in enumerate(out.get("messages") or [], 1):
        if not isinstance(message, GoObject):
            raise BodyError(f"messages[{number}] must be an object")
        clean = _canonical(message, MESSAGE_FIELDS, f"messages[{number}]")
        if "role" in clean:
            clean["role"] = clean["role"].lower()
        if "images" in clean:
            clean["images"] = _strings(clean["images"], f"messages[{number}].images")
        messages.append(clean)
    if "messages" in out:
        out["messages"] = messages
    return out


# The other inference routes Ollama reads with a struct (api/types.go).
OTHER_FIELDS = {
    "/api/show": {"model": _STRING, "system": _STRING, "template": _STRING, "verbose": _BOOL,
                  "options": _OBJECT, "name": _STRING},
    "/api/embed": {"model": _STRING, "input": _ANY, "keep_alive": _ANY, "truncate": _BOOL,
                   "dimensions": _INT, "options": _OBJECT},
    "/api/embeddings": {"model": _STRING, "prompt": _STRING, "keep_alive": _ANY,
                        "options": _OBJECT},
}


def canonical(path: str, obj: GoObject) -> dict | None:
    """The canonical body of an inference route Ollama reads with a struct; None for
    routes whose body goes on as it came (admin routes, OpenAI's)."""
    if path == "/api/generate":
        return canonical_generate(obj)
    if path == "/api/chat":
        return canonical_chat(obj)
    fields = OTHER_FIELDS.get(path)
    return _canonical(obj, fields, path.rsplit("/", 1)[-1]) if fields else None


def images_of(path: str, body: dict) -> list:
    """The base64 images of a canonical generate or chat body, in order."""
    if path == "/api/generate":
        return list(body.get("images") or [])
    return [image for message in body.get("messages") or []
            for image in message.get("images") or []]


# --- OpenAI-compatible chat (the fields that route it and carry images) ---------------------


def openai_images(obj: GoObject) -> list[str]:
    """The image URLs of an OpenAI-style chat body: every image_url content part.

    Ollama reads content parts as plain maps (exact keys) and the request as a struct
    (folded keys); every value either reading could take is collected, so none escapes
    the checks.
    """
    urls = []
    for messages in obj.fields("messages"):
        if not isinstance(messages, list):
            raise BodyError("messages must be an array")
        for number, message in enumerate(messages, 1):
            if not isinstance(message, GoObject):
                raise BodyError(f"messages[{number}] must be an object")
            for content in message.fields("content"):
                for part in content if isinstance(content, list) else ():
                    if isinstance(part, GoObject):
                        urls += _image_urls(part, number)
    return urls


def _image_urls(part: GoObject, number: int) -> list[str]:
    urls = []
    for image in part.fields("image_url"):
        for url in image.fields("url") if isinstance(image, GoObject) else [image]:
            if not isinstance(url, str):
                raise BodyError(f"messages[{number}]: image_url must hold a url string")
            urls.append(url)
    return urls


def encode(body: Any) -> bytes:
    """Compact JSON, all ASCII: what a lone surrogate becomes is then Go's business (U+FFFD)."""
    return json.dumps(body, separators=(",", ":")).encode()

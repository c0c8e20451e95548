#!/usr/bin/python
# -*- coding: utf-8 -*-
# gemma-airgap: prove a model answers — text, streaming and image prompts.

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: ollama_probe
short_description: Send test prompts to an Ollama model and measure the answers
description:
  - 'C(text) sends each of O(prompts) with C("stream": false) and checks for a complete answer.'
  - C(stream) sends each of O(prompts) streaming and checks the NDJSON framing (pieces, then
    one final object with C(done)) and that no piece carries a broken character; measures
    time to first token and tokens per second.
  - The first prompt's results are under C(text) and C(stream), the second's under
    C(text 2) and C(stream 2), and so on.
  - C(image) sends a chat message with O(image) when the model has the C(vision)
    capability, and is skipped with its reason otherwise (Ollama's gemma3n is text only,
    so images for it go to the vision service through the gateway).
  - Returns Ollama's own figures too (load, prompt and generation durations).
  - Sends prompts but changes nothing on the server (C(changed) is always false).
version_added: "0.1.0"
author: gemma-airgap developers (@gemma-airgap)
options:
  url:
    description: Base URL of the Ollama API (or of the gateway in front of it).
    type: str
    default: http://127.0.0.1:11434
  model:
    description: The model to probe.
    type: str
    required: true
  checks:
    description: Which probes to run.
    type: list
    elements: str
    choices: [text, stream, image]
    default: [text, stream, image]
  prompts:
    description:
      - The text prompts; the C(text) and C(stream) probes run once for each. The default
        asks in English and in Korean, as the sites' users do.
      - A streamed piece that carries a broken character (U+FFFD) fails the C(stream) probe.
    type: list
    elements: str
    default: ["Name one colour of the sky.", "하늘의 색깔 하나를 말해 주세요."]
  image:
    description: Path on the target of the image for the image probe.
    type: path
  image_model:
    description:
      - The model the image probe asks (default O(model)). Through the gateway, the model
        that has a vision backend; the gateway's C(/api/show) then reports C(vision) for it.
    type: str
  num_predict:
    description: Tokens to generate per probe.
    type: int
    default: 24
  expect:
    description: A regular expression the text answer must match.
    type: str
  api_key:
    description: Bearer token, for a gateway that requires one.
    type: str
  ca_path:
    description:
      - For an https O(url), the certificate (or CA) the server's chain must verify against.
        The host name is not checked (probes use the target's loopback address).
    type: path
  timeout:
    description: Seconds for each request (a cold model load counts).
    type: int
    default: 300
  hint:
    description: Appended to failure messages (e.g. the command that shows the server's logs).
    type: str
    default: ""
extends_documentation_fragment:
  - gemma_airgap.ollama.gemma_airgap.attributes
requirements:
  - Python standard library only.
seealso:
  - module: gemma_airgap.ollama.ollama_info
"""

EXAMPLES = r"""
- name: Prove the default model answers
  gemma_airgap.ollama.ollama_probe:
    url: http://172.30.0.2:11434
    model: gemma3n:e4b
    image: /opt/gemma-airgap/current/files/probe.png

- name: Prove text on the default model and images on the one with a vision backend
  gemma_airgap.ollama.ollama_probe:
    url: http://127.0.0.1:8080
    api_key: "{{ probe_key }}"
    model: gemma3n:e2b
    image_model: gemma3n:e4b
    image: /opt/gemma-airgap/probe.png
"""

RETURN = r"""
checks:
  description: Each probe's outcome and figures.
  returned: always
  type: dict
  sample:
    text: {passed: true, prompt: "Name one colour of the sky.", answer: "Blue.", eval_count: 3,
           tokens_per_s: 41.2, load_s: 0.0}
    stream: {passed: true, ttft_s: 0.05, tokens_per_s: 39.8, chunks: 25}
    text 2: {passed: true, prompt: "하늘의 색깔 하나를 말해 주세요.", answer: "파란색.",
             eval_count: 4}
    image: {skipped: true, reason: "gemma3n:e4b has no vision capability"}
summary:
  description: One line per probe for a report.
  returned: always
  type: list
  elements: str
"""

import base64
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gemma_airgap.ollama.plugins.module_utils.gemma_airgap_http import (
    ApiError,
    OllamaClient,
)


def seconds(ns):
    return round((ns or 0) / 1e9, 3)


def rate(count, ns):
    return round(count / (ns / 1e9), 1) if count and ns else 0.0


def final_figures(final):
    return {
        "done_reason": final.get("done_reason"),
        "load_s": seconds(final.get("load_duration")),
        "prompt_eval_count": final.get("prompt_eval_count", 0),
        "prompt_s": seconds(final.get("prompt_eval_duration")),
        "eval_count": final.get("eval_count", 0),
        "eval_s": seconds(final.get("eval_duration")),
        "total_s": seconds(final.get("total_duration")),
        "tokens_per_s": rate(final.get("eval_count"), final.get("eval_duration")),
    }


def probe_text(client, params, prompt):
    body = {"model": params["model"], "prompt": prompt, "stream": False,
            "options": {"num_predict": params["num_predict"]}}
    final = client.post("/api/generate", body)
    answer = final.get("response", "")
    result = dict(final_figures(final), answer=answer[:500])
    if not final.get("done") or not final.get("eval_count"):
        raise ProbeFailed("text", "the answer is incomplete (done=%s, eval_count=%s)" % (
            final.get("done"), final.get("eval_count")), result)
    if params["expect"] and not re.search(params["expect"], answer):
        raise ProbeFailed("text", "the answer %r does not match %r" % (
            answer[:200], params["expect"]), result)
    return result


def probe_stream(client, params, prompt):
    body = {"model": params["model"], "prompt": prompt, "stream": True,
            "options": {"num_predict": params["num_predict"]}}
    first = last = None
    chunks = 0
    final = None
    text = []
    for at, obj in client.stream("/api/generate", body):
        if "error" in obj:
            raise ProbeFailed("stream", "the stream ended with an error: %s" % obj["error"], {})
        if final is not None:
            raise ProbeFailed("stream", "data after the final object", {})
        if obj.get("done"):
            final = obj
            continue
        chunks += 1
        if u"\ufffd" in obj.get("response", ""):
            raise ProbeFailed("stream", "piece %d carries a broken character (U+FFFD): %r"
                              % (chunks, obj["response"][:80]), {"chunks": chunks})
        if obj.get("response"):
            text.append(obj["response"])
            first = at if first is None else first
            last = at
    if final is None:
        raise ProbeFailed("stream", "the stream ended without a final object", {"chunks": chunks})
    result = dict(final_figures(final), chunks=chunks, answer="".join(text)[:500],
                  ttft_s=round(first, 3) if first is not None else None,
                  client_tokens_per_s=round((chunks - 1) / (last - first), 1)
                  if first is not None and last and last > first else None)
    if not chunks:
        raise ProbeFailed("stream", "no pieces before the final object", result)
    return result


def probe_image(client, params, capabilities):
    model = params["image_model"] or params["model"]
    if "vision" not in capabilities:
        return {"skipped": True, "reason": "%s has no vision capability (%s)" % (
            model, ", ".join(capabilities) or "none")}
    if not params["image"]:
        return {"skipped": True, "reason": "no probe image given"}
    with open(params["image"], "rb") as handle:
        encoded = base64.b64encode(handle.read()).decode("ascii")
    body = {"model": model, "stream": False,
            "options": {"num_predict": params["num_predict"]},
            "messages": [{"role": "user", "content": "Describe this image in one sentence.",
                          "images": [encoded]}]}
    final = client.post("/api/chat", body)
    answer = (final.get("message") or {}).get("content", "")
    result = dict(final_figures(final), answer=answer[:500])
    if not final.get("done") or not final.get("eval_count"):
        raise ProbeFailed("image", "the answer is incomplete", result)
    return result


class ProbeFailed(Exception):
    def __init__(self, check, reason, figures):
        super(ProbeFailed, self).__init__(reason)
        self.check = check
        self.reason = reason
        self.figures = figures


def summary_line(name, outcome):
    if outcome.get("skipped"):
        return "%s: skipped (%s)" % (name, outcome["reason"])
    label = name
    if outcome.get("prompt"):
        label += " (%s)" % outcome["prompt"][:24]
    line = "%s: ok, %s tokens at %s tokens/s" % (label, outcome.get("eval_count"),
                                                 outcome.get("tokens_per_s"))
    if outcome.get("ttft_s") is not None:
        line += ", first token after %s s" % outcome["ttft_s"]
    if outcome.get("load_s"):
        line += ", model load %s s" % outcome["load_s"]
    return line


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:11434"),
            model=dict(type="str", required=True),
            checks=dict(type="list", elements="str", choices=["text", "stream", "image"],
                        default=["text", "stream", "image"]),
            prompts=dict(type="list", elements="str",
                         default=["Name one colour of the sky.",
                                  u"하늘의 색깔 하나를 말해 주세요."]),
            image=dict(type="path"),
            image_model=dict(type="str"),
            num_predict=dict(type="int", default=24),
            expect=dict(type="str"),
            api_key=dict(type="str", no_log=True),
            ca_path=dict(type="path"),
            timeout=dict(type="int", default=300),
            hint=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    params = module.params
    headers = {"Authorization": "Bearer %s" % params["api_key"]} if params["api_key"] else {}
    client = OllamaClient(params["url"], timeout=params["timeout"], headers=headers,
                          ca_path=params["ca_path"])
    hint = (" " + params["hint"]) if params["hint"] else ""
    checks = {}
    try:
        capabilities = client.post("/api/show", {"model": params["model"]}).get(
            "capabilities", [])
        for name in params["checks"]:
            if name in ("text", "stream"):
                probe = probe_text if name == "text" else probe_stream
                for number, prompt in enumerate(params["prompts"], 1):
                    key = name if number == 1 else "%s %d" % (name, number)
                    try:
                        checks[key] = dict(probe(client, params, prompt), passed=True,
                                           prompt=prompt)
                    except ProbeFailed as error:
                        error.check = key
                        raise
            else:
                if params["image_model"] and params["image_model"] != params["model"]:
                    capabilities = client.post("/api/show", {"model": params["image_model"]}).get(
                        "capabilities", [])
                outcome = probe_image(client, params, capabilities)
                checks[name] = dict(outcome, passed=not outcome.get("skipped"))
    except ProbeFailed as error:
        checks[error.check] = dict(error.figures, passed=False, reason=error.reason)
        module.fail_json(msg="%s probe of %s at %s failed: %s.%s" % (
            error.check, params["model"], params["url"], error.reason, hint), checks=checks)
    except ApiError as error:
        module.fail_json(msg="probing %s failed: %s.%s" % (params["model"], error, hint),
                         checks=checks)
    module.exit_json(changed=False, checks=checks,
                     summary=[summary_line(name, outcome) for name, outcome in checks.items()])


if __name__ == "__main__":
    main()

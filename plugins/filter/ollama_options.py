# -*- coding: utf-8 -*-
# gemma-airgap: Ollama's model options, checked on the staging host before a model is built.

"""Jinja filter ``ollama_option_problems``.

Ollama's /api/create stores a model's parameters as they come; their types are
checked only when a request uses the model (api/types.go Options.FromMap), and a
wrong one then fails *every* generate and chat with a 500. So prepare checks them
first, with Ollama's own words, and refuses the names Ollama would ignore.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# Ollama's Options and Runner fields (api/types.go, v0.32.15) by the JSON type they take.
INTEGER = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
           "num_keep", "seed", "num_predict", "top_k", "repeat_last_n")
FLOAT = ("top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
         "frequency_penalty")
BOOLEAN = ("use_mmap",)
STRING_LIST = ("stop",)
KNOWN = INTEGER + FLOAT + BOOLEAN + STRING_LIST


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(name, value):
    """Ollama's message for one option, or None when Ollama takes it."""
    if value is None:
        return None
    if name in INTEGER and not _is_number(value):
        return 'option "%s" must be of type integer' % name
    if name in FLOAT and not _is_number(value):
        return 'option "%s" must be of type float32' % name
    if name in BOOLEAN and not isinstance(value, bool):
        return 'option "%s" must be of type boolean' % name
    if name in STRING_LIST:
        if not isinstance(value, list):
            return 'option "%s" must be of type array' % name
        if not all(isinstance(item, str) for item in value):
            return 'option "%s" must be of an array of strings' % name
    return None


def ollama_option_problems(parameters):
    """Every parameter Ollama would refuse, or silently ignore, as a sentence."""
    if parameters is None:
        return []
    if not isinstance(parameters, dict):
        return ["parameters must be a mapping of option names to values"]
    problems = []
    for name in sorted(parameters):
        if name not in KNOWN:
            problems.append("unknown option %r: Ollama ignores it (known: %s)"
                            % (name, ", ".join(sorted(KNOWN))))
            continue
        problem = _problem(name, parameters[name])
        if problem:
            problems.append(problem)
    return problems


class FilterModule(object):
    def filters(self):
        return {"ollama_option_problems": ollama_option_problems}

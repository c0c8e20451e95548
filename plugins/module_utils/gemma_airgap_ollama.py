# -*- coding: utf-8 -*-
# Shared by the gemma-airgap modules; stdlib only (it runs on closed-network targets).
"""Ollama's on-disk store: model names, manifest paths, manifests and blob names.

A store (an OLLAMA_MODELS directory) holds manifests/<host>/<namespace>/<model>/<tag>
and blobs/sha256-<hex>. Names and manifests come from bundles and stores, so they
are hostile: a name part is a plain name (never "..", never with "/"), and a manifest
is accepted only with a sha256 digest and a whole, non-negative size on every entry.
"""

from __future__ import absolute_import, division, print_function

import json
import os
import re

__metaclass__ = type

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
# A registry host may carry a port (localhost:5000).
HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}")
DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
# Ollama's manifests are a few KiB; a larger one is not read.
MANIFEST_LIMIT = 1024 * 1024


def parse_name(raw):
    """(host, namespace, model, tag) of an Ollama model name, with Ollama's defaults.

    ValueError for anything that is not a plain name in every part.
    """
    if not isinstance(raw, str):
        raise ValueError("invalid model name %r" % (raw,))
    name, tag = raw, DEFAULT_TAG
    if ":" in raw.rsplit("/", 1)[-1]:
        name, tag = raw.rsplit(":", 1)
    parts = name.split("/")
    if not 1 <= len(parts) <= 3:
        raise ValueError("invalid model name %r" % raw)
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    if not HOST.fullmatch(host) or not all(PART.fullmatch(p) for p in (namespace, model, tag)):
        raise ValueError("invalid model name %r" % raw)
    return host, namespace, model, tag


def display_name(parts):
    host, namespace, model, tag = parts
    prefix = ""
    if host != DEFAULT_HOST:
        prefix = "%s/%s/" % (host, namespace)
    elif namespace != DEFAULT_NAMESPACE:
        prefix = "%s/" % namespace
    return "%s%s:%s" % (prefix, model, tag)


def manifest_path(store, parts):
    return os.path.join(store, "manifests", *parts)


def blob_name(digest):
    """The file name of a blob in blobs/, from a checked digest."""
    return "sha256-" + DIGEST.fullmatch(digest).group(1)


def manifest_entries(raw):
    """[config, *layers] of a manifest's bytes, each with a checked digest and size.

    ValueError says what is wrong with anything else.
    """
    manifest = json.loads(raw.decode("utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    config, layers = manifest.get("config"), manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ValueError("it needs a config object and a layers list")
    entries = [config, *layers]
    for entry in entries:
        digest = entry.get("digest") if isinstance(entry, dict) else None
        if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
            raise ValueError("bad digest %r" % (digest,))
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("bad size %r of %s" % (size, digest))
    return entries

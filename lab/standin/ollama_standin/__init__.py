"""An Ollama stand-in for the air-gap lab: the real llama.cpp engine behind
Ollama's native API and on-disk store. Test equipment, never production."""

import os

# The Ollama release whose API this follows; the suffix says what it really is.
VERSION = os.environ.get("OLLAMA_STANDIN_VERSION", "0.12.6-standin")

"""Prometheus metrics of the gateway, in one registry owned by the app.

Buckets are chosen for LLM latencies: milliseconds for metadata calls up to
minutes for long generations and cold model loads. Every label value comes from
a known set — endpoints from the route table, models from the backend's own
list (and the configured vision models), statuses as numbers — and anything else
is "other": a client cannot grow the series or fatten a scrape.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
                   600)
RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)


OTHER = "other"


def entries(answer: dict) -> list[dict]:
    """The model objects of an /api/tags or /api/ps answer: at most 1000, objects only (the
    backend's answer is checked like any input)."""
    models = answer.get("models")
    if not isinstance(models, list):
        return []
    return [model for model in models[:1000] if isinstance(model, dict)]


class Metrics:
    def __init__(self, fixed_models: tuple[str, ...] = ()) -> None:
        self.fixed_models = frozenset(model for model in fixed_models if model)
        self.known_models = self.fixed_models
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram("gateway_request_duration_seconds",
                                  "Request duration, first byte in to last byte out",
                                  ["endpoint", "model", "status"], buckets=LATENCY_BUCKETS,
                                  registry=r)
        self.ttft = Histogram("gateway_time_to_first_token_seconds",
                              "Time from the request to the first generated text",
                              ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Prompt tokens evaluated",
                                     ["model"], registry=r)
        self.completion_tokens = Counter("gateway_completion_tokens", "Tokens generated",
                                         ["model"], registry=r)
        self.tokens_per_second = Histogram("gateway_generation_tokens_per_second",
                                           "Generation speed reported by the backend",
                                           ["model"], buckets=RATE_BUCKETS, registry=r)
        self.load = Histogram("gateway_model_load_seconds", "Model load time in requests",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being served",
                               registry=r)
        self.errors = Counter("gateway_errors", "Failed requests by reason", ["reason"],
                              registry=r)
        self.auth_failures = Counter("gateway_auth_failures", "Refused keys by reason",
                                     ["reason"], registry=r)
        self.loaded = Gauge("gateway_model_loaded",
                            "1 when an inference host holds the model in memory",
                            ["model"], registry=r)
        self.loaded_bytes = Gauge("gateway_model_memory_bytes",
                                  "Memory of each loaded model over the inference hosts "
                                  "(their /api/ps)",
                                  ["model"], registry=r)
        self.available = Gauge("gateway_models_available", "Models in the backend's store",
                               registry=r)
        # The alert for a dead backend reads this: the poller's view, every poll_seconds.
        self.backend_up = Gauge("gateway_backend_up",
                                "1 when the backend answered the gateway's last poll, else 0",
                                ["backend"], registry=r)
        # Per inference host (the configured backends' names: a fixed set).
        self.pool_up = Gauge("gateway_pool_backend_up",
                             "1 when the inference host takes requests (answering its checks, "
                             "not ejected, not drained)", ["backend"], registry=r)
        self.pool_draining = Gauge("gateway_pool_backend_draining",
                                   "1 while the inference host is drained", ["backend"],
                                   registry=r)
        self.pool_in_flight = Gauge("gateway_pool_backend_in_flight",
                                    "Requests outstanding at the inference host", ["backend"],
                                    registry=r)
        self.pool_requests = Counter("gateway_pool_backend_requests",
                                     "Requests sent to the inference host", ["backend"],
                                     registry=r)
        self.pool_errors = Counter("gateway_pool_backend_errors",
                                   "Requests the inference host failed, by reason",
                                   ["backend", "reason"], registry=r)
        self.pool_retries = Counter("gateway_pool_backend_retries",
                                    "Requests sent on to another host after this one failed "
                                    "before answering", ["backend"], registry=r)
        self.pool_ejections = Counter("gateway_pool_backend_ejections",
                                      "Times the inference host was taken out after a "
                                      "connection failed", ["backend"], registry=r)

    def model(self, name: str) -> str:
        """The label for a model name: itself when the backend has it, else "other"."""
        return name if name in self.known_models else OTHER

    def record_backend(self, ps: dict, tags: dict) -> None:
        """What the poller read from /api/ps and /api/tags (the backend's own names)."""
        self.record_models([str(model.get("name", "")) for model in entries(tags)], ps)

    def record_models(self, names: list[str], ps: dict) -> None:
        """The model names the backends' stores hold, and what their /api/ps say."""
        # At most 1000 names, as one backend's list is, however many hosts there are.
        listed = list(dict.fromkeys(name for name in names if name))[:1000]
        self.known_models = self.fixed_models | frozenset(listed)
        self.loaded.clear()
        self.loaded_bytes.clear()
        for model in entries(ps):
            label = self.model(str(model.get("name", "")))
            size = model.get("size")
            # Loaded on any inference host; its memory summed over them.
            self.loaded.labels(label).set(1)
            self.loaded_bytes.labels(label).inc(
                size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0)
        self.available.set(len({name for name in names if name}))

    def record_final(self, model: str, final: dict) -> None:
        """Ollama's final stream object (or non-streamed answer): tokens and durations."""
        self.prompt_tokens.labels(model).inc(final.get("prompt_eval_count") or 0)
        completion = final.get("eval_count") or 0
        self.completion_tokens.labels(model).inc(completion)
        if completion and final.get("eval_duration"):
            self.tokens_per_second.labels(model).observe(
                completion / (final["eval_duration"] / 1e9))
        if final.get("load_duration"):
            self.load.labels(model).observe(final["load_duration"] / 1e9)

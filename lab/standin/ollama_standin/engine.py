"""The inference side: llama.cpp runners, scheduling, keep-alive, queue limits.

One loaded model holds OLLAMA_NUM_PARALLEL llama.cpp contexts (slots), as
Ollama gives each parallel request its own slot. A request waits for a free
slot; past OLLAMA_MAX_QUEUE waiting requests it is refused (503). A model stays
loaded for its keep-alive after its last use, then a reaper thread unloads it.

Each slot is one long-lived thread that owns its llama.cpp context and runs
every job on it: llama.cpp's OpenMP thread team belongs to the calling thread,
and calling from a new HTTP handler thread per connection cost ~40% of the
generation speed (measured: 25 vs 40 tokens/s on 2 cores).
"""

from __future__ import annotations

import codecs
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger("ollama_standin")

QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


class QueueFull(Exception):
    pass


class GenerationError(Exception):
    pass


@dataclass
class ModelRef:
    """What the scheduler needs to know about a model in the store."""

    name: str           # display name, e.g. gemma3:270m
    digest: str         # manifest digest (hex)
    path: str           # GGUF blob path
    size: int           # bytes of the weights
    details: dict
    kv_bytes_per_token: int = 0  # f16 K and V of every layer, for one token


@dataclass
class Loaded:
    ref: ModelRef
    num_ctx: int
    slots: list
    free: list
    load_duration_ns: int
    keep_alive: float | None = 300.0
    last_used: float = field(default_factory=time.monotonic)
    active: int = 0

    @property
    def memory(self) -> int:
        """What /api/ps reports as size: the weights plus every slot's KV cache."""
        return self.ref.size + self.ref.kv_bytes_per_token * self.num_ctx * len(self.slots)

    def expires_at(self) -> float | None:
        """Wall-clock expiry time, None for forever."""
        if self.keep_alive is None:
            return None
        idle_since = time.time() - (time.monotonic() - self.last_used) if not self.active \
            else time.time()
        return idle_since + self.keep_alive


def _load_llama(path: str, num_ctx: int):
    from llama_cpp import Llama  # imported lazily: tests of the API shape need no engine

    threads = int(os.environ.get("OLLAMA_NUM_THREADS", "0")) or (os.cpu_count() or 1)
    return Llama(model_path=path, n_ctx=num_ctx, n_threads=threads, n_batch=512,
                 verbose=False)


class Slot:
    """A thread that owns one llama.cpp context and runs jobs on it, one at a time."""

    def __init__(self, path: str, num_ctx: int, loader=_load_llama) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._ready: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._loop, args=(loader, path, num_ctx),
                                        daemon=True, name="slot")
        self._thread.start()
        error = self._ready.get()
        if error is not None:
            raise error

    def _loop(self, loader, path: str, num_ctx: int) -> None:
        try:
            llama = loader(path, num_ctx)
        except Exception as error:  # reported to the constructor's caller
            self._ready.put(error)
            return
        self._ready.put(None)
        while (job := self._jobs.get()) is not None:
            work, out, cancel = job
            try:
                for item in work(llama):
                    out.put(("item", item))
                    if cancel.is_set():
                        break
                out.put(("done", None))
            except Exception as error:
                out.put(("error", error))
        close = getattr(llama, "close", None)
        if close:
            close()

    def run(self, work: Callable) -> Iterator:
        """Run `work(llama)` (a generator) on the slot's thread; yield what it yields."""
        out: queue.Queue = queue.Queue()
        cancel = threading.Event()
        self._jobs.put((work, out, cancel))
        try:
            while True:
                kind, value = out.get()
                if kind == "item":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            cancel.set()
            while kind == "item":  # a consumer that stopped early: let the job finish
                kind, value = out.get()

    def close(self) -> None:
        self._jobs.put(None)


class Scheduler:
    def __init__(self, num_parallel: int = 1, max_queue: int = 512,
                 max_loaded: int = 3, loader=_load_llama) -> None:
        self.num_parallel = max(1, num_parallel)
        self.max_queue = max_queue
        self.max_loaded = max(1, max_loaded)
        self._loader = loader
        self._cond = threading.Condition()
        self._loaded: dict[str, Loaded] = {}
        self._pending = 0
        self._loading: set[str] = set()
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, daemon=True, name="reaper")
        self._reaper.start()

    # --- public ------------------------------------------------------------------

    def acquire(self, ref: ModelRef, num_ctx: int, keep_alive: float | None):
        """Wait for a slot of the model (loading it if needed).

        Returns (loaded, slot, load_duration_ns). Raises QueueFull.
        """
        with self._cond:
            if self._pending >= self.max_queue:
                raise QueueFull(QUEUE_FULL)
            self._pending += 1
        try:
            return self._acquire(ref, num_ctx, keep_alive)
        finally:
            with self._cond:
                self._pending -= 1

    def release(self, loaded: Loaded, slot: Slot, keep_alive: float | None) -> None:
        with self._cond:
            loaded.free.append(slot)
            loaded.active -= 1
            loaded.last_used = time.monotonic()
            loaded.keep_alive = keep_alive
            if keep_alive == 0 and loaded.active == 0:
                self._unload(loaded.ref.name)
            self._cond.notify_all()

    def load(self, ref: ModelRef, num_ctx: int, keep_alive: float | None) -> int:
        loaded, slot, load_ns = self.acquire(ref, num_ctx, keep_alive)
        self.release(loaded, slot, keep_alive)
        return load_ns

    def unload(self, name: str) -> None:
        with self._cond:
            loaded = self._loaded.get(name)
            if loaded is None:
                return
            if loaded.active:
                loaded.keep_alive = 0  # unloaded when its last request ends
            else:
                self._unload(name)

    def running(self) -> list[Loaded]:
        with self._cond:
            return list(self._loaded.values())

    def shutdown(self) -> None:
        self._stop.set()
        with self._cond:
            for name in list(self._loaded):
                self._unload(name)

    # --- internals ---------------------------------------------------------------

    def _acquire(self, ref: ModelRef, num_ctx: int, keep_alive: float | None):
        with self._cond:
            while True:
                loaded = self._loaded.get(ref.name)
                if loaded and (loaded.ref.digest != ref.digest or loaded.num_ctx != num_ctx):
                    # Different weights or context size: reload once idle, as Ollama does.
                    if loaded.active == 0:
                        self._unload(ref.name)
                        loaded = None
                    else:
                        self._cond.wait()
                        continue
                if loaded and loaded.free:
                    slot = loaded.free.pop()
                    loaded.active += 1
                    return loaded, slot, 0
                if loaded or ref.name in self._loading:
                    self._cond.wait()
                    continue
                self._make_room()
                self._loading.add(ref.name)
                break
        # Load outside the lock: other models keep serving meanwhile.
        try:
            started = time.perf_counter_ns()
            slots = [Slot(ref.path, num_ctx, self._loader) for _ in range(self.num_parallel)]
            load_ns = time.perf_counter_ns() - started
        except Exception:
            with self._cond:
                self._loading.discard(ref.name)
                self._cond.notify_all()
            raise
        with self._cond:
            self._loading.discard(ref.name)
            loaded = Loaded(ref=ref, num_ctx=num_ctx, slots=slots, free=list(slots[1:]),
                            load_duration_ns=load_ns, keep_alive=keep_alive, active=1)
            self._loaded[ref.name] = loaded
            self._cond.notify_all()
            log.info("loaded %s (num_ctx %d, %d slot(s)) in %.2fs", ref.name, num_ctx,
                     len(slots), load_ns / 1e9)
            return loaded, slots[0], load_ns

    def _make_room(self) -> None:
        while len(self._loaded) >= self.max_loaded:
            idle = [m for m in self._loaded.values() if m.active == 0]
            if not idle:
                self._cond.wait()
                continue
            oldest = min(idle, key=lambda m: m.last_used)
            self._unload(oldest.ref.name)

    def _unload(self, name: str) -> None:
        loaded = self._loaded.pop(name, None)
        if loaded is None:
            return
        for slot in loaded.slots:
            slot.close()
        log.info("unloaded %s", name)
        self._cond.notify_all()

    def _reap(self) -> None:
        while not self._stop.wait(0.25):
            with self._cond:
                now = time.monotonic()
                for name, loaded in list(self._loaded.items()):
                    if (loaded.active == 0 and loaded.keep_alive is not None
                            and now - loaded.last_used >= loaded.keep_alive):
                        self._unload(name)


@dataclass
class Generation:
    """Counts and timings of one generation, in Ollama's units (nanoseconds)."""

    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    done_reason: str = "stop"
    tokens: list = field(default_factory=list)


def _held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters could be the start of a stop sequence."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                hold = max(hold, size)
                break
    return hold


def generate(llama, tokens: list[int], options: dict, stats: Generation,
             grammar=None) -> Iterator[str]:
    """Yield text pieces for a prompt's tokens, filling `stats` as it goes."""
    from llama_cpp import llama_cpp as lib

    num_ctx = llama.n_ctx()
    if len(tokens) >= num_ctx:
        raise GenerationError(f"input length ({len(tokens)} tokens) exceeds the context "
                              f"length ({num_ctx} tokens)")
    cached = 0
    for have, want in zip(llama._input_ids[: llama.n_tokens], tokens, strict=False):
        if have != want:
            break
        cached += 1
    stats.prompt_eval_count = len(tokens) - min(cached, len(tokens) - 1)

    seed = options["seed"]
    llama.set_seed(seed if seed >= 0 else int.from_bytes(os.urandom(4), "little"))
    limit = options["num_predict"]
    if limit < 0:
        limit = num_ctx - len(tokens)
    limit = min(limit, num_ctx - len(tokens))
    stops = [s for s in options["stop"] if s]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    vocab = llama._model.vocab
    pending = ""
    started = time.perf_counter_ns()
    first_token_at = None
    stats.done_reason = "length"
    stream = llama.generate(
        tokens, top_k=options["top_k"], top_p=options["top_p"], min_p=options["min_p"],
        typical_p=options["typical_p"], temp=options["temperature"],
        repeat_penalty=options["repeat_penalty"],
        frequency_penalty=options["frequency_penalty"],
        presence_penalty=options["presence_penalty"], grammar=grammar)
    try:
        if limit > 0:
            for token in stream:
                now = time.perf_counter_ns()
                if first_token_at is None:
                    first_token_at = now
                    stats.prompt_eval_duration = now - started
                if lib.llama_vocab_is_eog(vocab, token):
                    stats.done_reason = "stop"
                    break
                stats.eval_count += 1
                stats.tokens.append(token)
                pending += decoder.decode(llama.detokenize([token], special=False))
                hit = min((pending.find(s) for s in stops if s in pending), default=-1)
                if hit >= 0:
                    pending = pending[:hit]
                    stats.done_reason = "stop"
                    break
                ready = len(pending) - _held_back(pending, stops)
                if ready > 0:
                    yield pending[:ready]
                    pending = pending[ready:]
                if stats.eval_count >= limit:
                    break
    finally:
        stream.close()
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending
    end = time.perf_counter_ns()
    if first_token_at is None:
        stats.prompt_eval_duration = end - started
        first_token_at = end
    stats.eval_duration = end - first_token_at

#!/usr/bin/env python3
"""Run test stages side by side, each into its own log, and report each one's time.

    python lab/stages.py NAME='COMMAND' NAME='COMMAND' ...

`make test` runs the end-to-end suites and the role scenarios at once: they use labs of
their own (prefixes gemma-airgap-lab and gemma-airgap-mol-<role>), and both spend much of
their time waiting on containers, alerts and health checks rather than on the CPU. A stage's
log goes to $LAB_CACHE/logs/<name>.log as it runs and is printed whole when it ends, so the
two never interleave. Each report also says how busy the machine's CPUs were while the stage
ran: near 100 % means the stages compete for the CPUs and only less work makes them faster;
well below it means they wait, and more of them side by side would finish sooner. The exit
status is the first failing stage's, after all have ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class CpuMeter:
    """The share of all CPUs' time spent busy between two readings of /proc/stat."""

    def __init__(self) -> None:
        self.start = self.read()

    @staticmethod
    def read() -> tuple[int, int]:
        try:
            first = Path("/proc/stat").read_text().split("\n")[0]
            fields = [int(value) for value in first.split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    def busy_since_start(self) -> str:
        (total, idle), (total_then, idle_then) = self.read(), self.start
        total, idle = total - total_then, idle - idle_then
        return f"CPUs {100 * (total - idle) / total:.0f} % busy" if total > 0 else "CPUs not read"


@dataclass
class Stage:
    name: str
    command: str
    log: Path
    started: float = field(default_factory=time.monotonic)
    cpu: CpuMeter = field(default_factory=CpuMeter)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(["bash", "-o", "pipefail", "-c", self.command],
                                            stdout=out, stderr=subprocess.STDOUT)
        print(f"stage {self.name}: started ({self.command}), log {self.log}", flush=True)

    def report(self) -> int:
        code = self.process.wait()
        took = time.monotonic() - self.started
        sys.stdout.write(f"\n===== stage {self.name} =====\n")
        sys.stdout.write(self.log.read_text(errors="replace"))
        verdict = "passed" if code == 0 else f"FAILED (exit {code})"
        print(f"===== stage {self.name}: {verdict} in {took / 60:.1f} min "
              f"({self.cpu.busy_since_start()} meanwhile) =====", flush=True)
        return code


def main(argv: list[str]) -> int:
    if not argv or any("=" not in arg for arg in argv):
        sys.exit(__doc__)
    logs = Path(os.environ.get("LAB_CACHE", "/var/cache/gemma-airgap")) / "logs"
    stages = [Stage(name, command, logs / f"{name}.log")
              for name, command in (arg.split("=", 1) for arg in argv)]
    for stage in stages:
        stage.start()
    # Reported in the order they finish, so a failure shows as soon as it happens.
    pending = list(stages)
    codes = []
    while pending:
        done = [stage for stage in pending if stage.process.poll() is not None]
        for stage in done:
            codes.append(stage.report())
            pending.remove(stage)
        time.sleep(1)
    return next((code for code in codes if code != 0), 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What machine a benchmark ran on, for the tables in docs/benchmarks.md (stdlib only)."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (from /proc/cpuinfo), else the platform's."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_meta(argv: list[str], **versions: str) -> dict:
    """Command, machine, load, versions and UTC date of a benchmark run (its table's header)."""
    import datetime
    import os
    import shlex
    return {"command": shlex.join(["python", *argv]), "machine": cpu_model(),
            "cpu_count": os.cpu_count(), "load_avg": [round(x, 1) for x in os.getloadavg()],
            "python": platform.python_version(), **versions,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}

"""`make test`: every test, in the time a 2-core machine allows, then the equality tests at 1 and 16 threads.

1. The fast tier (`-m "not heavy and not browser and not jupyterlab"`, what `make test-fast`
   runs: units and tiny sweeps in one process) at the machine's default thread count, alone.
2. Everything else, in two pytest processes at once, each with OMP_NUM_THREADS=1: the heavy
   tier (subprocesses, kernels, notebooks, several processes), the browser tests and the
   JupyterLab tier. Their time is imports, kernels and pages, single-threaded, so two of them use
   the two cores; and at one thread each they do not slow each other down (two processes of two
   OpenMP threads on two cores spin against each other: over twice as slow).
   The equality tests at OMP_NUM_THREADS=1 run after the lighter of the two.
3. The equality tests at OMP_NUM_THREADS=16, alone.

Every test runs in step 1 or 2 (the union of their selections is the whole suite). A pytest that
collects nothing (exit status 5) fails like a test; every step runs, and the run fails if any
step did. The output of the two processes of step 2 goes to log files, each printed when it ends.

Usage: python tests/run_suite.py (from the repository root; `make test` does this).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_FAST = "heavy or browser or jupyterlab"
# step 2's first process: the browser-driven files and the multi-process sweeps (~balances the other)
FIRST = ["tests/jupyterlab", "tests/test_browser.py", "tests/test_distributed.py"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _equality_files() -> list[str]:
    """The test files that mark `equality` tests (only they are collected for the reruns)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.equality" in p.read_text(encoding="utf-8"))


def _pytest(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", *args]


class Step:
    """pytest invocations run one after another, with their environments; output to the terminal,
    or to `log` for a step that runs beside another (in a thread: `start()`, then `join()`)."""

    def __init__(self, name: str, commands: list[tuple[dict, list[str]]], log: Path | None = None):
        self.name, self.commands, self.log = name, commands, log
        self.codes: list[int] = []
        self.current: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        out = open(self.log, "w") if self.log else sys.stdout
        try:
            for env, args in self.commands:
                threads = env.get("OMP_NUM_THREADS")
                print(f"\n== {self.name}: pytest -q {' '.join(args)}"
                      f"{f'  (OMP_NUM_THREADS={threads})' if threads else ''}", file=out, flush=True)
                # its own session: Ctrl-C reaches this runner, which stops a background step itself
                self.current = subprocess.Popen(_pytest(args), cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=self.log is not None)
                code = self.current.wait()
                if code == 5:
                    print("pytest collected no tests: failing", file=out, flush=True)
                self.codes.append(code)
        finally:
            if self.log:
                out.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self.current is not None and self.current.poll() is None:
            os.killpg(self.current.pid, signal.SIGTERM)

    @property
    def ok(self) -> bool:
        return len(self.codes) == len(self.commands) and all(code == 0 for code in self.codes)


def main() -> int:
    started = time.monotonic()
    equality = ["-m", "equality", *_equality_files()]
    logs = Path(tempfile.mkdtemp(prefix="img2img_lab_suite_"))

    # 1. the fast tier, at the machine's default thread count, alone
    fast = Step("fast tier", [({}, ["-m", f"not ({NOT_FAST})"])])
    fast.run()

    # 2. the rest in two processes at once, one thread each; the 1-thread equality run after the first
    first = Step("browser, JupyterLab and multi-process tests",
                 [(ONE_THREAD, ["-m", NOT_FAST, *FIRST]), (ONE_THREAD, equality)], logs / "first.log")
    second = Step("heavy tier", [(ONE_THREAD, ["-m", NOT_FAST, *(f"--ignore={path}" for path in FIRST)])],
                  logs / "second.log")
    print(f"\n== at once, one CPU thread each (logs in {logs}):\n   {first.name}, then the equality tests"
          f"\n   {second.name}", flush=True)
    pending = [first, second]
    try:
        for step in pending:
            step.start()
        while pending:
            for step in [s for s in pending if s.done()]:
                print(step.log.read_text(errors="replace"), end="", flush=True)
                pending.remove(step)
            time.sleep(0.5)
    except KeyboardInterrupt:
        for step in pending:
            step.stop()
        raise

    # 3. the equality tests at 16 threads, alone
    sixteen = Step("equality tests", [({"OMP_NUM_THREADS": "16", "MKL_NUM_THREADS": "16"}, equality)])
    sixteen.run()

    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\n== make test: {minutes}m{seconds:02d}s")
    steps = [(fast.name, fast), (first.name + " (1 thread), equality tests at 1 thread", first),
             (second.name + " (1 thread)", second), ("equality tests at 16 threads", sixteen)]
    for name, step in steps:
        print(f"   {'ok    ' if step.ok else 'FAILED'} {name}")
    return 0 if all(step.ok for _, step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())

"""`make test`: every test in the time a 2-core machine allows, and the equality tests at 1 and 16 threads.

1. The fast tier (`-m "not (heavy or browser or jupyterlab)"`, what `make test-fast` runs: units
   and tiny sweeps in one process) at the machine's default thread count, alone.
2. Everything else in two pytest processes at once, each with OMP_NUM_THREADS=1: the heavy tier
   (subprocesses, kernels, notebooks, several processes), the browser tests and the JupyterLab
   tier. Their time is imports, kernels and pages, single-threaded, so two of them use the two
   cores; at one thread each they do not slow each other down (two processes of two OpenMP
   threads on two cores spin against each other: more than twice as slow).
3. The equality tests again at OMP_NUM_THREADS=1 and at 16, each taken by whichever process of
   step 2 is done first (16 threads on 2 cores already wait rather than spin).

Every test runs in step 1 or 2 (the union of their selections is the whole suite). A pytest that
collects nothing (exit status 5) fails like a failing test; every run happens, and the suite
fails if any did. The output of steps 2 and 3 goes to two log files, each printed when it ends.

Usage: python tests/run_suite.py (from anywhere; `make test` runs it).
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
# step 2's first process: the browser-driven files and the multi-process sweeps (balances the other)
FIRST = ["tests/jupyterlab", "tests/test_browser.py", "tests/test_distributed.py"]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SIXTEEN_THREADS = {"OMP_NUM_THREADS": "16", "MKL_NUM_THREADS": "16"}
DURATIONS = ["--durations=10"]  # where the time goes, for the 5-minute budget


def _equality_files() -> list[str]:
    """The test files that mark `equality` tests (only they are collected for the reruns)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.equality" in p.read_text(encoding="utf-8"))


class Run:
    """One pytest invocation: its name, environment, arguments and, once run, its exit status."""

    def __init__(self, name: str, env: dict, args: list[str]):
        self.name, self.env, self.args = name, env, args
        self.code: int | None = None
        self.process: subprocess.Popen | None = None

    def __call__(self, out, *, own_session: bool = False) -> None:
        threads = self.env.get("OMP_NUM_THREADS")
        print(f"\n== {self.name}: pytest -q {' '.join(self.args)}"
              f"{f'  (OMP_NUM_THREADS={threads})' if threads else ''}", file=out, flush=True)
        # a background run has its own session: Ctrl-C reaches this script, which stops it
        self.process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", *self.args], cwd=ROOT,
                                        env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=own_session)
        self.code = self.process.wait()
        if self.code == 5:
            print("pytest collected no tests: failing", file=out, flush=True)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)


class Worker(threading.Thread):
    """Runs its own pytest runs, then takes more from a shared queue until it is empty; output to `log`."""

    def __init__(self, runs: list[Run], queue: list[Run], lock: threading.Lock, log: Path):
        super().__init__(daemon=True)
        self.runs, self.queue, self.lock, self.log = runs, queue, lock, log
        self.current: Run | None = None

    def _next(self) -> Run | None:
        if self.runs:
            return self.runs.pop(0)
        with self.lock:
            return self.queue.pop(0) if self.queue else None

    def run(self) -> None:
        with open(self.log, "w") as out:
            while (run := self._next()) is not None:
                self.current = run
                run(out, own_session=True)


def main() -> int:
    started = time.monotonic()
    equality = ["-m", "equality", *_equality_files()]
    logs = Path(tempfile.mkdtemp(prefix="img2img_lab_suite_"))

    # 1. the fast tier, at the machine's default thread count, alone
    fast = Run("fast tier", {}, ["-m", f"not ({NOT_FAST})", *DURATIONS])
    fast(sys.stdout)

    # 2. the rest in two processes at once, one thread each; 3. then the equality reruns
    first = Run("browser, JupyterLab and multi-process tests (1 thread)", ONE_THREAD,
                ["-m", NOT_FAST, *DURATIONS, *FIRST])
    second = Run("heavy tier (1 thread)", ONE_THREAD,
                 ["-m", NOT_FAST, *DURATIONS, *(f"--ignore={path}" for path in FIRST)])
    reruns = [Run("equality tests at 1 thread", ONE_THREAD, equality),
              Run("equality tests at 16 threads", SIXTEEN_THREADS, equality)]
    queue, lock = list(reruns), threading.Lock()
    workers = [Worker([first], queue, lock, logs / "first.log"), Worker([second], queue, lock, logs / "second.log")]
    print(f"\n== at once (logs in {logs}):\n   {first.name}\n   {second.name}\n   then the equality tests at 1 "
          "and at 16 threads, each in whichever is done first", flush=True)
    try:
        for worker in workers:
            worker.start()
        pending = list(workers)
        while pending:
            for worker in [w for w in pending if not w.is_alive()]:
                print(worker.log.read_text(errors="replace"), end="", flush=True)
                pending.remove(worker)
            time.sleep(0.5)
    except KeyboardInterrupt:
        for worker in workers:
            if worker.current is not None:
                worker.current.stop()
        raise

    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\n== make test: {minutes}m{seconds:02d}s")
    runs = [fast, first, second, *reruns]
    for run in runs:
        print(f"   {'ok    ' if run.code == 0 else 'FAILED'} {run.name}")
    return 0 if all(run.code == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

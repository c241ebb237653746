"""`make test`: every test in the time a 2-core machine allows, and the equality tests at three thread counts.

1. The fast tier (`-m "not (heavy or browser or jupyterlab)"`, what `make test-fast` runs: units
   and tiny sweeps) in two pytest processes at once, its files split between them by size, each
   with OMP_NUM_THREADS=1: tiny models gain nothing from a second thread, and two processes of
   two OpenMP threads on two cores spin against each other (more than twice as slow).
2. Everything else in two pytest processes at once, each with OMP_NUM_THREADS=1: the heavy tier
   (subprocesses, kernels, notebooks, several processes), the browser tests and the JupyterLab
   tier. Their time is imports, kernels and pages, single-threaded.
3. The equality tests again at 16 threads, taken by whichever process of step 2 is done first
   (16 threads on 2 cores already wait rather than spin), and then at the machine's default
   thread count, alone (two OpenMP threads beside another process spin: ten times slower). The
   all-families file is not rerun (`RERUN_SKIPS`: each of its cells is one plain pipeline call,
   the same computation on both sides at any thread count; the batched engine's and the
   snippet's equality tests are the ones a thread count can break). With step 1's one thread,
   one run checks three thread counts.

Every test runs in step 1 or 2 (the union of their selections is the whole suite). A pytest that
collects nothing (exit status 5) fails like a failing test; every run happens, and the suite
fails if any did. The output of each step's runs goes to log files, each printed when it ends.

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
DURATIONS = ["--durations=10"]  # where the time goes, for the time budget
DEFAULT_THREADS = {"OMP_NUM_THREADS": "", "MKL_NUM_THREADS": ""}  # unset: torch takes the core count
# equality files not rerun at other thread counts (see step 3)
RERUN_SKIPS = ("tests/test_family_equality.py",)


def _equality_files() -> list[str]:
    """The test files that mark `equality` tests (only they are collected for the reruns)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.equality" in p.read_text(encoding="utf-8") and str(p.relative_to(ROOT)) not in RERUN_SKIPS)


def _fast_halves() -> tuple[list[str], list[str]]:
    """The test files of the fast tier in two lists of about equal size (bytes: a proxy for time)."""
    files = sorted(((ROOT / "tests").rglob("test_*.py")), key=lambda p: (-p.stat().st_size, str(p)))
    halves: tuple[list, list] = ([], [])
    sizes = [0, 0]
    for path in files:
        n = sizes.index(min(sizes))
        halves[n].append(str(path.relative_to(ROOT)))
        sizes[n] += path.stat().st_size
    return sorted(halves[0]), sorted(halves[1])


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
        env = {k: v for k, v in {**os.environ, **self.env}.items() if v != ""}  # "" unsets
        self.process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", *self.args], cwd=ROOT,
                                        env=env, stdout=out, stderr=subprocess.STDOUT,
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


def _at_once(workers: list[Worker], title: str) -> None:
    """Start the workers, print each one's log when it ends; Ctrl-C stops their pytest runs."""
    print(f"\n== {title}", flush=True)
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


def main() -> int:
    started = time.monotonic()
    equality = ["-m", "equality", *_equality_files()]
    logs = Path(tempfile.mkdtemp(prefix="img2img_lab_suite_"))
    lock = threading.Lock()

    # 1. the fast tier in two processes at once, one thread each
    halves = _fast_halves()
    fast = [Run(f"fast tier, part {n + 1} of 2 (1 thread)", ONE_THREAD,
                ["-m", f"not ({NOT_FAST})", *DURATIONS, *half]) for n, half in enumerate(halves)]
    _at_once([Worker([run], [], lock, logs / f"fast{n + 1}.log") for n, run in enumerate(fast)],
             f"fast tier in two processes at once (logs in {logs})")

    # 2. the rest in two processes at once, one thread each; 3. then the equality reruns
    first = Run("browser, JupyterLab and multi-process tests (1 thread)", ONE_THREAD,
                ["-m", NOT_FAST, *DURATIONS, *FIRST])
    second = Run("heavy tier (1 thread)", ONE_THREAD,
                 ["-m", NOT_FAST, *DURATIONS, *(f"--ignore={path}" for path in FIRST)])
    sixteen = Run("equality tests at 16 threads", SIXTEEN_THREADS, equality)
    queue = [sixteen]
    workers = [Worker([first], queue, lock, logs / "first.log"), Worker([second], queue, lock, logs / "second.log")]
    _at_once(workers, f"at once:\n   {first.name}\n   {second.name}\n   then the equality tests at 16 threads "
                      "in whichever is done first")
    default = Run("equality tests at the default thread count", DEFAULT_THREADS, equality)
    default(sys.stdout)
    reruns = [sixteen, default]

    minutes, seconds = divmod(round(time.monotonic() - started), 60)
    print(f"\n== make test: {minutes}m{seconds:02d}s")
    runs = [*fast, first, second, *reruns]
    for run in runs:
        print(f"   {'ok    ' if run.code == 0 else 'FAILED'} {run.name}")
    return 0 if all(run.code == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

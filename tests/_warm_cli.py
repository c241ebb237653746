"""A warm `img2img-lab` command line for tests that start it many times (tests/test_faults.py).

`python -m img2img_lab sweep ...` spends most of its start importing torch, diffusers and
transformers (~8 s of CPU on a 2-core machine, before the tiny model's first cell). `WarmCLI`
starts one server process that pays the imports once (it imports the modules a tiny/sd15 sweep
uses, loads the model once with `cache=False` and keeps nothing, and runs no computation); each
`start(argv, log)` then forks a child that runs `img2img_lab.cli.main(argv)`, the function that
`python -m img2img_lab` calls, with its stdout and stderr in `log`. A child is an ordinary
process: it loads its pipeline, reads and writes its folder, and can be SIGKILLed at any moment.
`WarmProcess` answers like `subprocess.Popen` (`pid`, `poll()`, `wait()`, `kill()`, `returncode`,
negative for a signal).

The server takes its environment at start: give it the children's (e.g. `OMP_NUM_THREADS=1`).
Forking is safe here because the server has started no threads: with one OpenMP thread and no
computation before the fork, torch's thread pools do not exist yet.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time

# The server: reads one JSON request a line on stdin, answers one JSON line on stdout.
_SERVER = r"""
import json, os, signal, sys, traceback

import torch, diffusers, transformers  # noqa: F401  (the imports every child would pay)
import img2img_lab as lab
import img2img_lab.cli
from img2img_lab import runner, store  # noqa: F401

lab.load_pipeline("tiny/sd15", cache=False)  # imports the pipeline's classes; the child loads its own
done = {}
requests, answers = sys.stdin, sys.stdout
print(json.dumps({"ready": os.getpid()}), file=answers, flush=True)


def child(argv, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.argv = ["img2img-lab", *argv]
    code = 1
    try:
        code = img2img_lab.cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


def status(pid):
    if pid not in done:
        got, raw = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            done[pid] = os.waitstatus_to_exitcode(raw)
    return done.get(pid)


for line in requests:
    request = json.loads(line)
    if "start" in request:
        pid = os.fork()
        if pid == 0:
            child(request["start"], request["log"])
        print(json.dumps({"pid": pid}), file=answers, flush=True)
    elif "poll" in request:
        print(json.dumps({"returncode": status(request["poll"])}), file=answers, flush=True)
"""


class WarmCLI:
    """One warm server (a context manager); `start()` forks a command-line run from it."""

    def __init__(self, env: dict):
        # started at once, waited for at the first request: it warms up while the caller works
        self._errors = tempfile.TemporaryFile("w+")  # a file, not a pipe nobody reads (it could fill)
        self._process = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._errors, env=env, text=True)
        self._ready = False

    def _read(self, timeout: float = 600) -> dict:
        # the server answers at once, except for its warm-up (torch's import: generous for a
        # loaded machine); if it dies, the pipe closes and readline returns ""
        if not select.select([self._process.stdout], [], [], timeout)[0]:
            self._process.kill()
            raise AssertionError(f"the warm CLI server did not answer within {timeout:.0f} s")
        line = self._process.stdout.readline()
        if not line:
            self._process.wait(timeout=60)
            self._errors.seek(0)
            raise AssertionError(f"the warm CLI server exited:\n{self._errors.read()[-4000:]}")
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        if not self._ready:
            ready = self._read()
            assert "ready" in ready, ready
            self._ready = True
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._read()

    def start(self, argv: list, log) -> "WarmProcess":
        """Run `img2img-lab <argv>` in a forked child, its output appended to `log`."""
        return WarmProcess(self, self._ask({"start": [str(a) for a in argv], "log": str(log)})["pid"])

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()  # the server's loop ends, it exits
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._errors.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class WarmProcess:
    """A forked command-line run, answering as `subprocess.Popen` does."""

    def __init__(self, server: WarmCLI, pid: int):
        self._server, self.pid, self.returncode = server, pid, None

    def poll(self):
        if self.returncode is None:
            self.returncode = self._server._ask({"poll": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, 9)

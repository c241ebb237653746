"""The project's exceptions: one hierarchy, and every message names the argument and the value.

    LabError                       every error img2img_lab raises on purpose
    ├── ValidationError(ValueError) bad input, found before any model runs
    ├── StoreError(OSError)         a sweep folder or file that cannot be read or written
    └── ReportError(RuntimeError)   a report notebook that failed while executing

Each one is also the builtin exception a caller would catch for that kind of failure, so
`except ValueError` / `except OSError` keep working around img2img_lab calls. Messages read
``"`arg` must ..., got X"``: the argument (a function argument, a spec key, a notebook parameter,
or the file's role such as `out_dir`), what it must be, and the offending value.
"""

from __future__ import annotations

from pathlib import Path


class LabError(Exception):
    """Base class of every error img2img_lab raises on purpose."""


class ValidationError(LabError, ValueError):
    """Bad user input (an argument, a spec key, a notebook parameter), found before any model runs.

    The message always names the argument and the offending value, e.g.
    ``"`strength` must be in [0, 1], got 1.2"``.
    """


class StoreError(LabError, OSError):
    """A sweep folder or file cannot be read or written (a corrupt table, a PNG without parameters).

    The message names the argument the folder or file came from and the path, e.g.
    ``"`out_dir` '/runs/cat' must hold a readable results.parquet, got ... (ArrowInvalid: ...)"``.
    """


class ReportError(LabError, RuntimeError):
    """A report notebook failed while executing: which cell, which error, where the partial notebook is.

    Attributes:
        cell_index: index of the failing cell in the notebook as it ran (0-based, papermill's
            injected-parameters cell included). The kept notebook also has papermill's two error
            marker cells (one at the top, one just before the failing cell).
        exec_count: its execution count, the `In [n]` shown in Jupyter.
        ename, evalue: the exception's class name and message inside the kernel.
        notebook: the executed (partial) notebook kept on disk.
    """

    def __init__(self, cell_index, exec_count, ename, evalue, notebook):
        self.cell_index, self.exec_count = cell_index, exec_count
        self.ename, self.evalue, self.notebook = ename, evalue, Path(notebook)
        super().__init__(
            f"`notebook` {self.notebook.name!r} failed in cell {cell_index} (In [{exec_count}]): {ename}: {evalue}; "
            f"the partial notebook is kept at {str(self.notebook)!r}"
        )

    def __reduce__(self):  # picklable across processes despite the five-argument __init__
        return type(self), (self.cell_index, self.exec_count, self.ename, self.evalue, self.notebook)

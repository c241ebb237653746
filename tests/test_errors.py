"""One error hierarchy: every error img2img_lab raises on purpose is a LabError defined in errors.py,
also the builtin a caller would catch, and its message names the argument and the value."""

import ast
import pickle
from pathlib import Path

import pytest
from PIL import Image

import img2img_lab as lab
from img2img_lab import errors
from img2img_lab.store import SweepStore, read_png_parameters

PACKAGE = Path(lab.__file__).parent


def test_the_hierarchy():
    assert issubclass(errors.ValidationError, (errors.LabError, ValueError))
    assert issubclass(errors.StoreError, errors.LabError) and issubclass(errors.StoreError, OSError)
    assert issubclass(errors.ReportError, errors.LabError) and issubclass(errors.ReportError, RuntimeError)
    assert lab.ReportError is errors.ReportError and lab.StoreError is errors.StoreError


def test_no_module_defines_its_own_exception():
    for path in PACKAGE.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception")) for b in bases), (path.name, node.name)


def test_report_error_names_the_notebook_and_survives_pickling(tmp_path):
    err = errors.ReportError(3, 2, "ValueError", "bad", tmp_path / "report.ipynb")
    assert str(err).startswith("`notebook` 'report.ipynb' failed in cell 3 (In [2]): ValueError: bad;")
    again = pickle.loads(pickle.dumps(err))
    assert (again.cell_index, again.notebook, str(again)) == (3, err.notebook, str(err))


def test_store_errors_name_the_argument_and_the_value(tmp_path):
    (tmp_path / "results.parquet").write_bytes(b"not parquet")
    with pytest.raises(errors.StoreError, match=r"^`out_dir` '.*' must hold a readable results.parquet, got one"):
        SweepStore(tmp_path).read_table()
    (tmp_path / "meta.json").write_text("{oops")
    with pytest.raises(OSError, match=r"^`out_dir` '.*' must hold a valid meta.json, got invalid JSON"):
        SweepStore(tmp_path).read_meta()
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(errors.StoreError, match=r"^`path` must be a PNG written by an img2img_lab sweep .*got '.*plain.png'"):
        read_png_parameters(tmp_path / "plain.png")

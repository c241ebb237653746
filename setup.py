"""The one packaging setting pyproject.toml cannot hold: notebooks/ ships as `img2img_lab/notebooks/`.

The guide's notebooks have one copy, the repository's notebooks/ folder, the files users open and
edit. A wheel carries that folder as the subpackage `img2img_lab.notebooks` (its .ipynb files are
package data, see pyproject.toml), where `img2img_lab.reports.notebook_folder` finds them; a
checkout or an editable install reads notebooks/ in place. pyproject.toml's `packages.find`
cannot map a subpackage to a folder outside the package, so the packages are listed here:
every package under img2img_lab/ (found, as `packages.find` would), plus that one.
Everything else about the package is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

PACKAGES = find_namespace_packages(include=["img2img_lab", "img2img_lab.*"],
                                   exclude=["*.__pycache__", "img2img_lab.notebooks*"])

setup(packages=[*PACKAGES, "img2img_lab.notebooks"], package_dir={"img2img_lab.notebooks": "notebooks"})

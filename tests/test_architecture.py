"""The house rules of docs/ARCHITECTURE.md, checked on the source: no import cycles, package imports
at the top of modules (only torch/matplotlib-importing modules may be imported lazily), no module
reaching into another one's underscore names, and a cheap `import img2img_lab`."""

import ast
import subprocess
import sys
from pathlib import Path

import img2img_lab

PACKAGE = Path(img2img_lab.__file__).parent
# Package modules that import a heavy third-party library at their top: another module may import
# them inside a function so that importing it stays cheap.
HEAVY = {"img2img_lab.batched": "torch", "img2img_lab.figures": "matplotlib"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports():
    """(importer, imported module, imported names, line, at the top?) for every relative import."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not node.level:
                continue
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            if node.module is None:  # from . import x: the submodule x
                for name in names:
                    out.append((module, f"{target}.{name}", [], node.lineno, id(node) in top))
            else:
                out.append((module, target, names, node.lineno, id(node) in top))
    return out


def test_no_import_cycles():
    edges = {}
    for importer, target, _, _, _ in _imports():
        if target != importer and not target.startswith(importer + "."):
            edges.setdefault(importer, set()).add(target)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_package_imports_are_at_the_top():
    inner = [f"{importer}:{line} imports {target}" for importer, target, _, line, top in _imports()
             if not top and target not in HEAVY]
    assert not inner, "package imports inside functions (move them to the top):\n" + "\n".join(inner)


def test_no_module_imports_another_modules_underscore_names():
    private = [f"{importer}:{line} imports {name} from {target}" for importer, target, names, line, _ in _imports()
               for name in names if name.startswith("_") and target != importer]
    assert not private, "\n".join(private)
    # nor reaches them as attributes: `module._name` of a package module
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and n.module is None
                   for a in n.names}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in modules):
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, "\n".join(found)


def test_importing_the_package_and_its_plain_modules_stays_cheap():
    code = ("import sys, img2img_lab, img2img_lab.spec, img2img_lab.vocab, img2img_lab.loaders, img2img_lab.families, "
            "img2img_lab.reports, img2img_lab.runner; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_vocab_imports_nothing_of_the_package():
    assert [t for i, t, *_ in _imports() if i == "img2img_lab.vocab"] == []


# Who may import whom (docs/ARCHITECTURE.md): a module imports only modules of its own layer or
# below (acyclic within a layer). A new module gets a layer here, or this test fails.
LAYERS = {
    0: {"errors", "vocab", "values"},                                    # names and facts
    1: {"frozen", "ranges", "torchutil", "quiet", "families"},           # plain helpers, model families
    2: {"validation", "cells", "spec", "images", "tiny", "loaders", "checkpoints", "prompts", "control", "knobs",
        "catalog", "memory", "batched", "adapters"},                                 # specs, models, the engine
    3: {"store", "result", "loop", "timings"},                                      # the folder, the table, the loop
    4: {"runner", "chains"},                                             # running sweeps
    5: {"figures", "grid", "plots", "widgets", "metrics", "planning"},             # seeing results
    6: {"htmlexport", "reports", "cli", "__main__"},                     # outside: pages, reports, CLI
}


def _layer(module: str) -> int:
    name = module.removeprefix("img2img_lab.").split(".")[0]
    for layer, names in LAYERS.items():
        if name in names:
            return layer
    raise AssertionError(f"module {module!r} has no layer in LAYERS (tests/test_architecture.py)")


def test_every_module_imports_only_its_layer_or_below():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "__init__.py":
            _layer(_module_name(path))  # every module is placed
    upward = [f"{i} (layer {_layer(i)}) imports {t} (layer {_layer(t)})" for i, t, *_ in _imports()
              if i != "img2img_lab" and t != "img2img_lab" and _layer(t) > _layer(i)]
    assert not upward, "\n".join(upward)

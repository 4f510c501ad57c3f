"""labpy's modules form layers, and imports only run downward: store and helpers < models, tasks, training <
experiments < page helpers and the CLI. An upward import (a model module looking up the experiment registry)
ties a lower layer to everything above it and makes import cycles one edit away."""

import ast
from pathlib import Path

import labpy

PACKAGE = Path(labpy.__file__).parent

# lowest first; a module's layer is that of its longest matching prefix
LAYERS = (
    ("base", ("errors", "paths", "validation", "device", "provenance", "store", "store_migrate", "render_log",
              "nf4", "pages")),
    ("core", ("train", "tasks", "models", "interp", "memory", "finetune")),
    ("experiments", ("experiments",)),
    ("top", ("notebook", "plots", "questions", "status", "cli", "__init__")),
)


def layer_of(module: str) -> int:
    """`module` is dotted from inside the package ('models.lab_lm', '__init__')."""
    for level, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    raise AssertionError(f"labpy.{module} is in no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> list[str]:
    """Package-internal modules a file imports, dotted from the package root, lazy imports included."""
    here = module_name(path).split(".") if path != PACKAGE / "__init__.py" else []
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[str] = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = package[:len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "labpy" or node.module.startswith("labpy.")):
                prefix = node.module.split(".")[1:]
            else:
                continue
            if node.module is None or node.module == "labpy":   # `from . import plots`: submodules
                found += [".".join([*prefix, a.name]) for a in node.names]
            else:
                found.append(".".join(prefix))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("labpy.") for a in node.names if a.name.startswith("labpy.")]
    return [m for m in found if m]


def test_layers_cover_every_module():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path) if path.name != "__init__.py" or path.parent != PACKAGE else "__init__")


def test_no_module_imports_a_higher_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = "__init__" if path == PACKAGE / "__init__.py" else module_name(path)
        for target in imported_modules(path):
            if layer_of(target) > layer_of(name):
                upward.append(f"labpy.{name} imports labpy.{target} "
                              f"({LAYERS[layer_of(name)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import():
    """The rule can fail: a lazy registry import inside a model module (the lab LM's old `lab_lm_dir`) is found
    and ranks upward."""
    path = PACKAGE / "models" / "lab_lm.py"
    source = path.read_text() + "\n\ndef _f():\n    from ..experiments.registry import results\n"
    assert "experiments.registry" in imported_modules(path, source)
    assert layer_of("experiments.registry") > layer_of(module_name(path))
    assert imported_modules(PACKAGE / "__init__.py", "from . import plots\nfrom .store import RunStore\n") == \
        ["plots", "store"]

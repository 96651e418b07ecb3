"""The package flow: every import inside exemplar_tf (top-level or inside a function) points down the layers, so
no package cycle can form. The programs at the top (exemplar_tf/*.py) may import any package."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "exemplar_tf"

# Lower layers first. A package may import its own layer's siblings only where listed as lower here: the
# base layer (no project imports but each other's), then the flow data -> augment -> models -> objectives ->
# training -> serving -> evaluation, then the programs' own packages on top.
LAYERS = [
    ("errors", "io", "choices", "metrics", "optim"),
    ("data",),
    ("augment",),
    ("models",),
    ("objectives",),
    ("training",),
    ("serving",),
    ("probe",),
    ("evaluation",),
    ("finetuning", "matching", "api"),
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def _imported_packages(path: pathlib.Path):
    """(line, package) for every exemplar_tf package a module imports, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "exemplar_tf":
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names
                     if alias.name.startswith("exemplar_tf.")]
        else:
            continue
        for name in names:
            yield node.lineno, name


def _package_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) > 1:  # inside a package (top-level modules are the programs)
            yield relative.parts[0], path


def test_every_package_has_a_layer():
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert packages == set(RANK), f"packages without a layer: {packages - set(RANK)}; layers without a package: " \
                                  f"{set(RANK) - packages}"


@pytest.mark.parametrize("package", sorted(RANK))
def test_imports_point_down_the_flow(package):
    upward = []
    for owner, path in _package_modules():
        if owner != package:
            continue
        for line, imported in _imported_packages(path):
            if imported != package and imported in RANK and RANK[imported] >= RANK[package]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports exemplar_tf.{imported}")
    assert not upward, "imports against the flow:\n  " + "\n  ".join(upward)


def test_the_walker_sees_function_level_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from exemplar_tf.serving import runs\n    import exemplar_tf.training.loop\n")
    assert list(_imported_packages(module)) == [(2, "serving"), (3, "training")]

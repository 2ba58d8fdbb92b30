"""The import rule of CONTRIBUTING.md, read from the source: a module of robustcl imports only from
its own layer or the layers below it, and no chain of imports comes back to where it started.

Every import counts, a function's own included (a function-level import does not make an upward
import right; it only hides a circle until the function runs). The rule is checked on a copy of
the package with an import planted against it, so this test can fail.
"""

import ast
import os
import shutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Bottom first; each layer may import its own and those listed before it. The package's face
# (robustcl/__init__.py, the public API) stands above them all.
LAYERS = (
    ("base", ("robustcl.registry", "robustcl.settings", "robustcl.files", "robustcl.hardware", "robustcl.net")),
    ("data", ("robustcl.data",)),
    ("models", ("robustcl.models",)),
    ("losses", ("robustcl.losses",)),
    ("attacks", ("robustcl.attacks",)),
    ("methods", ("robustcl.methods",)),
    ("embeddings", ("robustcl.embeddings",)),
    ("training", ("robustcl.training",)),
    ("evaluation", ("robustcl.evaluation",)),
    ("serving", ("robustcl.serving",)),
    ("cli", ("robustcl.cli",)),
    ("reproduce", ("robustcl.reproduce",)),
    ("api", ("robustcl",)),
)


def modules(root):
    """{module name: file path} of every .py file of the package under `root`."""
    found = {}
    package_dir = os.path.join(root, "robustcl")
    for directory, _, names in os.walk(package_dir):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def layer_of(module):
    """Index of the module's layer in LAYERS (the longest prefix that names it)."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS and CONTRIBUTING.md"
    return best[0]


def imports(path, known, own):
    """(imported module, line) of every robustcl import in the file, resolved to a module of the
    package: `from robustcl.x import y` is robustcl.x.y where that is a module, else robustcl.x."""
    tree = ast.parse(open(path).read(), path)
    package = own if path.endswith("__init__.py") else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [(base, alias.name) for alias in node.names]
        else:
            continue
        for base, name in names:
            if base != "robustcl" and not base.startswith("robustcl."):
                continue
            target = f"{base}.{name}" if name and f"{base}.{name}" in known else base
            found.append((target, node.lineno))
    return found


def violations(root):
    """Readable lines: every import of a higher layer, and every circle of imports."""
    known = modules(root)
    graph = {}
    found = []
    for module, path in sorted(known.items()):
        graph[module] = set()
        for target, line in imports(path, known, module):
            if target == module:
                continue
            graph[module].add(target)
            if layer_of(target) > layer_of(module):
                found.append(
                    f"{os.path.relpath(path, root)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]}), a higher layer"
                )
    found.extend(
        f"circle: these {len(part)} modules import each other in a ring: {', '.join(part)}" for part in cycles(graph)
    )
    return found


def cycles(graph):
    """The modules of every circle: each strongly connected part of the graph of more than one
    module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                part.append(member)
                if member == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_point_down_and_never_circle():
    assert violations(REPO) == []


@pytest.fixture
def package_copy(tmp_path):
    shutil.copytree(os.path.join(REPO, "robustcl"), tmp_path / "robustcl")
    return tmp_path


def _plant(root, relative, line):
    path = root / relative
    path.write_text(path.read_text() + f"\n\ndef planted():\n    {line}\n")


def test_a_planted_upward_import_is_named(package_copy):
    # Inside a function, as an upward import hidden from import time would be.
    _plant(package_copy, "robustcl/data/pipeline.py", "from robustcl.training import run")
    found = violations(package_copy)
    assert any(
        "robustcl/data/pipeline.py" in f and "robustcl.training.run (training), a higher layer" in f for f in found
    ), found


def test_a_planted_circle_is_named(package_copy):
    # Both within one layer (attacks), so only the circle can catch it.
    _plant(package_copy, "robustcl/attacks/threat.py", "from robustcl.attacks import pgd")
    found = violations(package_copy)
    assert any(
        f.startswith("circle:") and "robustcl.attacks.pgd" in f and "robustcl.attacks.threat" in f for f in found
    )


def test_every_module_has_a_layer():
    for module in modules(REPO):
        layer_of(module)

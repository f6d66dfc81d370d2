"""The import graph: every folder imports only the layers below it (docs/architecture.md), and
an import inside a function, the project's or a third party's, says why on its line
(`# deferred: ...`)."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What each part of the project may import from the project (besides itself). Longest prefix wins.
# Read from the bottom up: f1_common is the framework-neutral bottom (NumPy, Pillow,
# SentencePiece); f1_jax holds the JAX models, the training and the launcher; inference is the
# policy interface, its backends and the server.
COMMON = {"f1_common"}
ALLOWED: dict[str, set[str]] = {
    "f1_common": set(),
    "f1_jax": set(),  # the package's __init__ is empty
    "f1_jax.models": COMMON,
    "data_pipelines": COMMON,
    "f1_jax.training": COMMON | {"f1_jax.models", "data_pipelines"},
    "f1_jax.recipes": set(),
    "f1_jax.launch": COMMON
    | {"f1_jax.recipes", "f1_jax.training", "f1_jax.models", "data_pipelines"},
    "f1_jax.aot": COMMON | {"f1_jax.recipes", "f1_jax.training", "f1_jax.models"},
    "conversion": COMMON | {"f1_jax.models", "f1_jax.training"},
    "f1_torch": COMMON,
    "inference": COMMON | {"f1_jax", "data_pipelines", "conversion", "f1_torch"},
    "configs": {"f1_jax.training.sharding", "f1_jax.models"},
    "builtin_task": COMMON
    | {"f1_jax", "data_pipelines", "conversion", "f1_torch", "inference", "configs"},
    "libero_eval": COMMON | {"inference", "data_pipelines"},
    "benchmarks": {"*"},
}
PACKAGES = (
    "f1_common",
    "f1_jax",
    "data_pipelines",
    "conversion",
    "f1_torch",
    "inference",
    "configs",
    "builtin_task",
    "libero_eval",
    "benchmarks",
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rule(module: str) -> tuple[str, set[str]]:
    matches = [k for k in ALLOWED if module == k or module.startswith(k + ".")]
    assert matches, f"{module} belongs to no layer of ALLOWED: add it to this test and the docs"
    key = max(matches, key=len)
    return key, ALLOWED[key]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(tree: ast.AST):
    """(line number, imported project module, inside a function) of every project import.

    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`.
    """
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    inner = {id(s) for f in functions for s in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if _is_module(n) else node.module for n in subs]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield node.lineno, name, id(node) in inner


def _imports_inside_functions(tree: ast.AST):
    """(line number, module) of every import, project or third-party, inside a function."""
    functions = [
        n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    for function in functions:
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                yield node.lineno, node.names[0].name
            elif isinstance(node, ast.ImportFrom):
                yield node.lineno, node.module or "."


def _allowed(name: str, own: str, allowed: set[str]) -> bool:
    if "*" in allowed or name == own or name.startswith(own + "."):
        return True
    return any(name == a or name.startswith(a + ".") for a in allowed)


def test_imports_only_go_down_and_say_why_when_deferred():
    problems = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.relative_to(ROOT).parts[0] not in PACKAGES:
            continue
        own, allowed = _rule(_module_name(path))
        source = path.read_text()
        lines = source.splitlines()
        for lineno, name, deferred in _imports(ast.parse(source)):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            if not _allowed(name, own, allowed):
                problems.append(f"{where}: {own} may not import {name}")
        for lineno, name in sorted(set(_imports_inside_functions(ast.parse(source)))):
            if "# deferred:" not in lines[lineno - 1]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{lineno}: {name} imported inside a function "
                    "without '# deferred: why' (a hard dependency belongs at the top)"
                )
    assert not problems, "\n".join(problems)


def test_the_contract_and_the_torch_runtime_import_no_jax_or_tensorflow():
    """f1_common.transforms is what a robot computer without JAX or TensorFlow imports."""
    code = (
        "import sys, f1_common.transforms\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'tensorflow')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# The folders drawn as layers: f1_jax's subpackages are layers of their own.
SPLIT_FOLDERS = ("f1_jax.models", "f1_jax.training")
DIAGRAM_BEGIN = "<!-- layers: generated by `python tests/test_layers.py`; a test fails when stale -->"
DIAGRAM_END = "<!-- layers: end -->"


def _folder(module: str) -> str:
    for split in SPLIT_FOLDERS:
        if module == split or module.startswith(split + "."):
            return split.replace(".", "/")
    return module.split(".")[0]


def folder_graph() -> dict[str, set[str]]:
    """Folder -> the folders it imports, over every library file (benchmarks and tests aside)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.glob("*/**/*.py")):
        top = path.relative_to(ROOT).parts[0]
        if top not in PACKAGES or top == "benchmarks":
            continue
        own = _folder(_module_name(path))
        deps = graph.setdefault(own, set())
        for _, name, _ in _imports(ast.parse(path.read_text())):
            if name.split(".")[0] != "benchmarks" and _folder(name) != own:
                deps.add(_folder(name))
    return graph


def layer_diagram(graph: dict[str, set[str]]) -> str:
    """The folders from the top layer down, each with what it imports; raises on a cycle."""
    level: dict[str, int] = {}

    def depth(folder: str, stack: tuple[str, ...] = ()) -> int:
        if folder in stack:
            raise AssertionError(f"import cycle between folders: {' -> '.join(stack + (folder,))}")
        if folder not in level:
            deps = graph.get(folder, set())
            level[folder] = 1 + max((depth(d, stack + (folder,)) for d in deps), default=-1)
        return level[folder]

    for folder in graph:
        depth(folder)
    width = max(len(f) for f in graph) + 2
    rows = [f"{'layer':<6}{'folder':<{width}}imports"]
    for folder in sorted(graph, key=lambda f: (-level[f], f)):
        deps = ", ".join(sorted(graph[folder])) or "-"
        rows.append(f"{level[folder]:<6}{folder + '/':<{width}}{deps}")
    return "\n".join(rows)


def _documented_diagram() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    return text.split(DIAGRAM_BEGIN)[1].split(DIAGRAM_END)[0].strip().strip("`").strip()


def test_folders_are_layers_and_the_documented_diagram_is_current():
    """Drawn by folder, no import runs back up (no cycle), and docs/architecture.md shows it."""
    diagram = layer_diagram(folder_graph())
    assert _documented_diagram() == diagram, (
        "docs/architecture.md's layer diagram is stale: run `python tests/test_layers.py`"
    )


if __name__ == "__main__":
    doc = ROOT / "docs" / "architecture.md"
    text = doc.read_text()
    head, rest = text.split(DIAGRAM_BEGIN)
    tail = rest.split(DIAGRAM_END)[1]
    diagram = layer_diagram(folder_graph())
    doc.write_text(f"{head}{DIAGRAM_BEGIN}\n```\n{diagram}\n```\n{DIAGRAM_END}{tail}")
    print(diagram)

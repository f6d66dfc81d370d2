"""The import graph: every package imports only the layers below it (docs/architecture.md), and
a project import inside a function says why on its line (`# deferred: ...`)."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What each part of the project may import from the project (besides itself). Longest prefix wins.
CONTRACT = {"f1_jax.transforms", "f1_jax.image_tools", "f1_jax.tokenizer", "f1_jax.official_config"}
ALLOWED: dict[str, set[str]] = {
    "f1_jax": set(),  # the package's __init__ is empty
    "f1_jax.image_tools": set(),
    "f1_jax.tokenizer": set(),
    "f1_jax.official_config": set(),
    "f1_jax.transforms": {"f1_jax.image_tools"},
    "f1_jax.models": CONTRACT,
    "data_pipelines": CONTRACT,
    "f1_jax.training": CONTRACT | {"f1_jax.models", "data_pipelines"},
    "conversion": CONTRACT | {"f1_jax.models", "f1_jax.training"},
    "f1_jax.policy": CONTRACT
    | {"f1_jax.models", "f1_jax.training", "data_pipelines", "conversion"},
    "f1_torch": CONTRACT,
    "f1_jax.serve": CONTRACT | {"f1_jax.policy", "f1_torch"},
    "f1_jax.recipes": set(),
    "f1_jax.launch": CONTRACT
    | {"f1_jax.recipes", "f1_jax.training", "f1_jax.models", "data_pipelines"},
    "f1_jax.aot": CONTRACT | {"f1_jax.recipes", "f1_jax.training", "f1_jax.models"},
    "configs": {"f1_jax.training.sharding", "f1_jax.models"},
    "builtin_task": CONTRACT
    | {"f1_jax.models", "f1_jax.training", "f1_jax.policy", "f1_torch", "data_pipelines"}
    | {"conversion", "configs"},
    "benchmarks": {"*"},
}
PACKAGES = (
    "f1_jax",
    "data_pipelines",
    "conversion",
    "configs",
    "builtin_task",
    "benchmarks",
    "f1_torch",
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
            if deferred and "# deferred:" not in lines[lineno - 1]:
                problems.append(
                    f"{where}: {name} imported inside a function without '# deferred: why'"
                )
    assert not problems, "\n".join(problems)


def test_the_contract_and_the_torch_runtime_import_no_jax_or_tensorflow():
    """f1_jax.transforms is what a robot computer without JAX or TensorFlow imports."""
    code = (
        "import sys, f1_jax.transforms\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'tensorflow')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)

"""The layering docs/architecture.md promises, checked on the source tree (imports inside functions count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450
CLI_ENTRY = {"ddray.cli", "ddray.__main__"}  # the one place that may start the service (ddray serve)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted([*ROOT.glob("ddray/**/*.py"), *ROOT.glob("api/**/*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported_names(module: str, path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names, anywhere in the file (relative ones resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
    return names


def _internal(name: str) -> str | None:
    """The project module an imported name belongs to (``ddray.data.Dataset`` -> ``ddray.data``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        targets = {_internal(n) for n in _imported_names(module, path)} - {None, module}
        graph[module] = {t for t in targets if not module.startswith(t + ".")}  # a package's own parents load anyway
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_imports_inside_functions_and_finds_cycles():
    assert "ddray.orchestration.driver" in {_internal(n) for n in _imported_names("ddray.cli", MODULES["ddray.cli"])}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_core_imports_neither_ray_nor_the_service():
    offenders = {}
    for module, path in MODULES.items():
        if not module.startswith("ddray.") or module.startswith("ddray.orchestration") or module in CLI_ENTRY:
            continue
        roots = {n.split(".")[0] for n in _imported_names(module, path)}
        if bad := roots & {"ray", "api"}:
            offenders[module] = sorted(bad)
    assert offenders == {}


def test_the_service_and_the_client_are_apart():
    """The REST client never imports the service; the service's routes reach Ray only through its runner."""
    for module, path in MODULES.items():
        roots = {n.split(".")[0] for n in _imported_names(module, path)}
        if module.startswith("ddray.client"):
            assert "api" not in roots, module
        if module.startswith("api.routes"):
            assert "ray" not in roots, module


def test_no_module_over_the_size_limit():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in MODULES.values()}
    assert {path: n for path, n in sizes.items() if n > MAX_LINES} == {}, "split these by concern"


def test_no_test_doubles_in_the_product():
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        assert not [c for c in classes if c.startswith(("Fake", "Mock", "Stub"))], module


def fresh_python(code: str) -> str:
    """What ``code`` prints in a new interpreter (module imports of this test process do not count)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()


def test_public_api_is_importable_without_ray_or_torch():
    """``import ddray`` is what notebooks and the service do first: the public names, nothing heavy."""
    out = fresh_python(
        "import sys, ddray\n"
        "missing = [n for n in ddray.__all__ if n != 'TrainedRun' and not hasattr(ddray, n)]\n"
        "heavy = sorted(m for m in ('ray', 'torch') if m in sys.modules)\n"
        "trained_run = ddray.TrainedRun.__module__  # loaded on first use (it needs torch)\n"
        "print(missing, heavy, trained_run)\n"
    )
    assert out == "[] [] ddray.predict"


def test_validating_a_config_does_not_import_torch():
    """`ddray run` starts Ray once the config is valid, and imports torch while Ray starts; a validation that
    imported torch (1-2 s) would hold Ray's start back by that much."""
    out = fresh_python(
        "import sys\n"
        "from ddray.config import parse_config\n"
        "parse_config({'dataset': {'source': 'digits'}, 'local_model': {'name': 'resnet18', 'stem': 'imagenet'},"
        " 'compare': ['global']})\n"
        "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))\n"
    )
    assert out == "[]"

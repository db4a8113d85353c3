"""The package's shape: no import cycles and no module importing another's private names.

Imports are read with `ast`, function-level (lazy) imports included: a cycle hidden inside a
function is still a cycle to a reader following the code.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cdvideo"


def _modules() -> dict[str, Path]:
    modules = {}
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    """Each module's cdvideo imports (the named module, or the submodule a `from` names), and every
    `from cdvideo.x import _name` of another module's private name."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private = []
    for name, file in modules.items():
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                edges[name].update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cdvideo"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    if submodule in modules:
                        edges[name].add(submodule)
                        continue
                    edges[name].add(node.module)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and node.module != name:
                        private.append(f"{name} imports {alias.name} from {node.module}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in edges.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    edges, _ = _imports(_modules())
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_another_modules_private_names():
    _, private = _imports(_modules())
    assert private == []


def test_metrics_and_presets_stay_light():
    """`cdvideo eval` runs without diffusers, and presets are read without torch (design: dependency rule)."""
    modules = _modules()
    edges, _ = _imports(modules)
    for name in ("cdvideo.models.presets", "cdvideo.hub", "cdvideo.sidecar"):
        text = modules[name].read_text()
        assert "import torch" not in text and "from torch" not in text, name
    assert not any(target.startswith(("cdvideo.render", "cdvideo.models.loading"))
                   for name in modules if name.startswith("cdvideo.metrics") for target in edges[name])

"""The shape of the code base, as tests: every module imports, no import circle (between packages
or between the modules of one), no package reaches into another's `_private` names, every method
that a batch file or notebook names is in the one method table, and the product speaks of itself
only (no development rounds, hosts or commit hashes)."""
from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "bdlm_lib"
MODULES = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in LIB.rglob("*.py"))


def _module_of(name: str) -> str:
    """bdlm_lib.x.__init__ -> bdlm_lib.x (a package is its __init__)."""
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _imports(module: str) -> list[tuple[str, list[str]]]:
    """(imported bdlm_lib module, names taken from it) for every import in `module`, including the
    ones inside functions (a lazy import still ties two modules together)."""
    path = REPO / (module.replace(".", "/") + ".py")
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    pkg = _module_of(pkg)
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("bdlm_lib"):
                continue
            names = [a.name for a in node.names]
            # `from . import x` where x is a submodule imports that submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in ALL]
            out += [(s, []) for s in subs]
            if len(subs) < len(names):
                out.append((target, [n for n in names if f"{target}.{n}" not in ALL]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("bdlm_lib")]
    return [(t, n) for t, n in out if t in ALL and t != _module_of(module)]


ALL = {_module_of(m) for m in MODULES}


def _graph(level) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for m in MODULES:
        a = level(_module_of(m))
        for t, _ in _imports(m):
            b = level(t)
            if a != b:
                g.setdefault(a, set()).add(b)
    return g


def _cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _package(mod: str) -> str:
    """bdlm_lib.joint.run -> bdlm_lib.joint; a top-level module is its own package."""
    parts = mod.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(_module_of(module))


def test_no_import_circle_between_packages():
    assert _cycle(_graph(_package)) is None, " -> ".join(_cycle(_graph(_package)))


def test_no_import_circle_between_modules():
    cyc = _cycle(_graph(lambda m: m))
    assert cyc is None, " -> ".join(cyc)


def test_no_package_imports_another_packages_private_names():
    bad = []
    for m in MODULES:
        for target, names in _imports(m):
            if _package(target) != _package(_module_of(m)):
                bad += [f"{m}: {target}.{n}" for n in names if n.startswith("_")]
    assert bad == []


def _method_names_in_batches() -> set[str]:
    from bdlm_lib.experiments.batch import load_batch
    names = set()
    for f in (REPO / "params" / "batches").glob("*.yaml"):
        spec = load_batch(f)
        own = set(spec.get("methods") or {})
        blocks = spec["grid"] if isinstance(spec["grid"], list) else [spec["grid"]]
        for b in blocks:
            names |= {m for m in b.get("methods", []) if m not in own}
        for m in own:
            ext = (spec["methods"][m] or {}).get("extends")
            if ext:
                names.add(ext)
        for step in spec["notebooks"]:
            if isinstance(step, dict) and isinstance(step.get("methods"), list):
                names |= set(step["methods"])
    return names


def _method_names_in_notebooks() -> set[str]:
    """Methods a notebook passes to run_many / method_params / run_method as string literals."""
    names = set()
    call = re.compile(r"(?:run_many|method_params|run_method|run_recorded)\(\s*(\[[^\]]*\]|\"[a-z_0-9]+\")")
    for nb in (REPO / "notebooks").glob("*.ipynb"):
        for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] != "code":
                continue
            for m in call.finditer("".join(cell["source"])):
                names |= set(re.findall(r"\"([a-z_0-9]+)\"", m.group(1)))
    return names


def test_every_method_in_batch_files_and_notebooks_is_in_the_method_table():
    from bdlm_lib.methods import METHODS
    named = _method_names_in_batches() | _method_names_in_notebooks()
    assert {"bdlm", "lightgcn", "instructrec"} <= named        # the scan itself finds methods
    assert named - set(METHODS) == set()


def test_labels_and_bundles_come_from_the_method_table():
    """Nothing outside methods.py spells a method's bundle or display name as a table."""
    offenders = []
    for p in LIB.rglob("*.py"):
        if p.name == "methods.py":
            continue
        text = p.read_text(encoding="utf-8")
        if re.search(r"\"instructrec\"\s*:\s*\{", text) or re.search(r"\"lightgcn\"\s*:\s*\"LightGCN\"", text):
            offenders.append(str(p.relative_to(REPO)))
    assert offenders == []


HISTORY = re.compile(r"\bsessions? [0-9]+|\bsessions [0-9]+-[0-9]+|\bcommit [0-9a-f]{7,}\b|\(commit [0-9a-f]{7}"
                     r"|this\shost|slowest\shost|fastest\shost", re.IGNORECASE)
EXTERNAL_SPEC = re.compile(r"\bSPEC\b|BDLM_SPEC")   # a document the repository does not contain


def test_no_development_history_in_the_product():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    files = [f for f in files if (REPO / f).is_file() and f != "tests/test_structure.py"]
    hits = []
    for f in files:
        try:
            text = (REPO / f).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line) or EXTERNAL_SPEC.search(line):
                hits.append(f"{f}:{n}: {line.strip()[:100]}")
    assert hits == []


def test_defaults_live_in_base_yaml_only():
    """No `params.get("key", default)` / `params["section"].get("key", default)` in the library: a
    default written in code could drift from base.yaml's."""
    pat = re.compile(r"(params|\bp|\bj|\bd|\blp|\bllm|\bsft|\bts)(\[\"[a-z_]+\"\])?\.get\(\"[a-z_]+\",\s*[^)]")
    hits = [f"{p.relative_to(REPO)}:{n}" for p in LIB.rglob("*.py")
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pat.search(line)]
    assert hits == []


def test_base_yaml_has_no_dead_keys():
    """Every key of base.yaml is read somewhere in the library (or by a notebook)."""
    from bdlm_lib.store import flat
    keys = flat(yaml.safe_load((REPO / "params" / "base.yaml").read_text()))
    code = "\n".join(p.read_text(encoding="utf-8") for p in LIB.rglob("*.py"))
    code += "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "notebooks").glob("*.ipynb"))
    dead = [k for k in keys if not re.search(rf"[\"'.]{re.escape(k.split('.')[-1])}\b", code)]
    assert dead == []

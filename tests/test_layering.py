"""The house's layering, read from the source: imports run one way (likelihood kernels
at the bottom, the CLI at the top), no private name crosses a package, and imports sit
at module level except for the optional extras (matplotlib, Dask)."""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "gpufit")
# lower imports nothing above it; equal ranks do not import each other
RANK = {
    "exceptions": 0, "_version": 0, "testing": 0,
    "_arrays": 1, "_device": 1,
    "likelihood": 2, "model": 3, "workspace": 4, "optimize": 4, "infer": 5,
    "plotting": 6, "campaign": 6, "executors": 7, "cli": 8, "__init__": 9, "__main__": 9,
}
SHARED = {"_arrays", "_device", "_version"}  # the package's own helpers, for every layer
OPTIONAL = ("matplotlib", "distributed", "dask")  # the plot and dask extras


def _modules():
    for folder, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                yield path, parts


def _imports(path, parts):
    """(package of the importer, imported package, module path inside it, names, node)
    of every relative import."""
    tree = ast.parse(open(path).read())
    here = parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
            target = base + (node.module.split(".") if node.module else [])
            names = [a.name for a in node.names]
            if not target:  # from .. import x: each x is a package or module
                for name in names:
                    yield parts[0], name, [], [], node
            else:
                yield parts[0], target[0], target[1:], names, node


def test_imports_run_one_way():
    wrong = []
    for path, parts in _modules():
        for importer, imported, _, _, node in _imports(path, parts):
            if imported != importer and RANK[imported] >= RANK[importer]:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {importer} -> {imported}")
    assert not wrong, "imports running back up a layer:\n" + "\n".join(wrong)


def test_no_private_name_crosses_a_package():
    wrong = []
    for path, parts in _modules():
        for importer, imported, inner, names, node in _imports(path, parts):
            if imported == importer or imported in SHARED:
                continue
            private = [p for p in inner if p.startswith("_")] + [n for n in names if n.startswith("_")]
            if private:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {private}")
    assert not wrong, "private names imported from another package:\n" + "\n".join(wrong)


def test_imports_are_at_module_level_except_the_optional_extras():
    hidden = []
    for path, parts in _modules():
        for node in ast.walk(ast.parse(open(path).read())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    modules = [a.name for a in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    modules = ["." * inner.level + (inner.module or "")]
                else:
                    continue
                if not all(m.split(".")[0] in OPTIONAL for m in modules):
                    hidden.append(f"{os.path.relpath(path, ROOT)}:{inner.lineno} {modules}")
    assert not hidden, "function-level imports that are no optional extra:\n" + "\n".join(hidden)


def test_every_module_has_a_rank():
    """A new module or package must be given its place in RANK, or the tests above
    could not judge its imports."""
    names = {parts[0] for _, parts in _modules()}
    assert names <= set(RANK), f"give {sorted(names - set(RANK))} a rank in RANK"

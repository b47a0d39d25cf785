"""The one-way architecture (issue 15): no module imports from a layer above its own.

Layers, bottom to top: data -> models -> training -> evaluation (measurement) -> experiments
(orchestration) -> reporting -> cli. A module may import from its own layer and the ones below
it. Every import counts -- at module level, inside functions (where a back-edge is easiest to
hide) and under ``if TYPE_CHECKING:`` -- read from the source with :mod:`ast`, so nothing is
imported to run this test. The CLI also leaves result files to the reporting layer: no CLI module
calls a result writer (:data:`RESULT_WRITERS`, ``plot_*``) or writes a file by hand (:data:`RAW_WRITES`).
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"capsrobust": ROOT / "capsrobust", "capsrobust_cli": ROOT / "cli"}

#: Bottom to top. "shared" holds leaf utilities every layer may use (errors, paths, atomic files,
#: provenance records, malloc settings, the paper's published numbers, progress output); they import
#: no other layer. Each shared module is listed by name in :data:`LAYER_OF`: none is shared by default.
LAYERS = ("shared", "data", "models", "training", "evaluation", "experiments", "reporting", "cli")

#: The folders are the layers: each package of capsrobust/ is one layer (``capsrobust.<layer>``), attacks/
#: is part of measurement, the CLI package is its own; only the shared utilities sit at the top level,
#: each listed by name. Module (or package prefix) -> layer; the longest matching prefix wins, except
#: that a name in :data:`EXACT_ONLY` places that module alone. A new top-level module must be listed here.
SHARED_MODULES = ("errors", "paths", "files", "runtime", "provenance", "reference", "progress")
LAYER_OF = {
    "capsrobust": "shared",  # the package's __init__ (version only); not a prefix (EXACT_ONLY)
    **{f"capsrobust.{name}": "shared" for name in SHARED_MODULES},
    **{f"capsrobust.{layer}": layer for layer in LAYERS if (PACKAGES["capsrobust"] / layer).is_dir()},
    "capsrobust.attacks": "evaluation",
    "capsrobust_cli": "cli",
}

#: Entries of :data:`LAYER_OF` that place only the module of that exact name, never the modules under
#: it: the package root is shared, but a new top-level module ``capsrobust.x`` is unplaced until listed.
EXACT_ONLY = frozenset({"capsrobust"})

#: Imports allowed to break the order for now: importer -> the modules it may still import from a
#: higher layer (None: any), each with the issue that removes it. Keep this list short and shrinking.
TEMPORARY_EXCEPTIONS: dict[str, frozenset[str] | None] = {}  # none left (issue 15)


def _excepted(module: str, imported: str) -> bool:
    if module not in TEMPORARY_EXCEPTIONS:
        return False
    allowed = TEMPORARY_EXCEPTIONS[module]
    return allowed is None or imported in allowed


#: Measurement never trains: below experiments, only the training layer itself imports the loop;
#: evaluation gets trained models through capsrobust.training.checkpoints.load_model.
TRAINING_LOOP = "capsrobust.training.loop"


def _module_name(package: str, path: Path) -> str:
    parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((package, *parts))


def _modules() -> dict[str, Path]:
    return {_module_name(package, path): path
            for package, root in PACKAGES.items() for path in sorted(root.rglob("*.py"))}


MODULES = _modules()


def layer_of(module: str) -> str | None:
    """The layer of a capsrobust module, by the longest prefix in :data:`LAYER_OF` (an :data:`EXACT_ONLY`
    entry only for itself); None: unplaced."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in EXACT_ONLY and end < len(parts):
            continue
        layer = LAYER_OF.get(prefix)
        if layer is not None:
            return layer
    return None


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, relative ones resolved; ``from X import y``
    counts as ``X.y`` when that is a module of ours, else as ``X``."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                found.append((node.lineno, candidate if candidate in MODULES else source))
    return list(dict.fromkeys(found))  # `from X import a, b` is one import of X


def _ours(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if layer_of(m) is None]
    assert not unplaced, f"place these modules in a layer (tests/test_layers.py LAYER_OF): {unplaced}"


def test_an_unlisted_top_level_module_is_not_shared() -> None:
    """Shared is a list of modules, not a catch-all: the package root places nothing but itself."""
    assert layer_of("capsrobust") == "shared" and layer_of("capsrobust.errors") == "shared"
    assert layer_of("capsrobust.new_helper") is None
    assert layer_of("capsrobust.models.new_layer") == "models" and layer_of("capsrobust_cli.new") == "cli"
    shared = sorted(m for m in MODULES if layer_of(m) == "shared")
    assert shared == sorted(m for m, layer in LAYER_OF.items() if layer == "shared")


def test_no_import_runs_back_up_a_layer() -> None:
    back_edges = []
    for module, path in MODULES.items():
        own = LAYERS.index(layer_of(module))
        for line, imported in imports_of(module, path):
            if _ours(imported) and LAYERS.index(layer_of(imported)) > own and not _excepted(module, imported):
                back_edges.append(f"{path.relative_to(ROOT)}:{line}: {module} ({layer_of(module)}) imports "
                                  f"{imported} ({layer_of(imported)})")
    assert not back_edges, "imports that run back up a layer:\n" + "\n".join(back_edges)


def test_measurement_never_imports_the_training_loop() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {module}"
                 for module, path in MODULES.items() if layer_of(module) == "evaluation"
                 for line, imported in imports_of(module, path)
                 if imported == TRAINING_LOOP and not _excepted(module, imported)]
    assert not offenders, ("evaluation imports the training loop; load trained models with "
                           "capsrobust.training.checkpoints.load_model instead:\n" + "\n".join(offenders))


def test_the_library_is_importable_without_click() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {imported}"
                 for module, path in MODULES.items() if module.split(".")[0] == "capsrobust"
                 for line, imported in imports_of(module, path)
                 if imported.split(".")[0] in ("click", "capsrobust_cli")]
    assert not offenders, "capsrobust/ imports the CLI layer:\n" + "\n".join(offenders)


def test_temporary_exceptions_name_real_modules() -> None:
    assert set(TEMPORARY_EXCEPTIONS) <= set(MODULES)
    for module in TEMPORARY_EXCEPTIONS:  # a stale exception is a hole in the check: say so
        own = LAYERS.index(layer_of(module))
        if not any((_ours(i) and LAYERS.index(layer_of(i)) > own or i == TRAINING_LOOP) and _excepted(module, i)
                   for _, i in imports_of(module, MODULES[module])):
            warnings.warn(f"{module} no longer breaks the layer order; remove it from TEMPORARY_EXCEPTIONS")


#: The result writers: atomic files (capsrobust.files, re-exported by capsrobust.reporting), figures
#: (``savefig``, capsrobust.reporting.plots.save_figure) and every ``plot_*`` function. Result files are the
#: reporting layer's job: a CLI module parses options, calls the library and echoes what it returns.
RESULT_WRITERS = frozenset({"write_csv", "write_json", "atomic_write_text", "atomic_write_bytes", "savefig",
                            "save_figure"})

#: Writing a file by hand, around the writers: ``path.write_text(...)``, ``path.write_bytes(...)``,
#: ``json.dump(...)``, ``table.to_csv(path)`` (with no path it returns text) and ``open(path, "w")``.
RAW_WRITES = frozenset({"write_text", "write_bytes", "dump"})

#: CLI module -> {writer: why it may still call it}. Keep this empty unless a reason is compelling.
CLI_WRITER_EXCEPTIONS: dict[str, dict[str, str]] = {}


def _is_writer(name: str) -> bool:
    return name in RESULT_WRITERS or name.startswith("plot_")


def _writes_by_hand(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and (func.attr in RAW_WRITES or func.attr == "to_csv" and (
            call.args or any(k.arg == "path_or_buf" for k in call.keywords))):
        return func.attr
    if isinstance(func, ast.Name) and func.id == "open":
        modes = list(call.args[1:2]) + [k.value for k in call.keywords if k.arg == "mode"]
        if any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax+") for m in modes):
            return "open"
    return None


def _writer_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every call of a result writer (``f(...)`` or ``x.f(...)``), every import of one
    (which would let it be called under another name or handed on as a callback) and every file
    written by hand (:data:`RAW_WRITES`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if _is_writer(name):
                found.append((node.lineno, name))
            elif (raw := _writes_by_hand(node)) is not None:
                found.append((node.lineno, raw))
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, alias.name) for alias in node.names if _is_writer(alias.name)]
    return sorted(found)


def test_cli_modules_leave_result_files_to_reporting() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}" for module, path in MODULES.items()
                 if layer_of(module) == "cli" for line, name in _writer_uses(ast.parse(path.read_text()))
                 if name not in CLI_WRITER_EXCEPTIONS.get(module, {})]
    assert not offenders, ("CLI modules call result writers; write the files from a capsrobust.reporting function "
                           "and echo what it returns:\n" + "\n".join(offenders))


def test_a_writer_in_the_cli_is_caught() -> None:
    source = ("from capsrobust.reporting import to_markdown, write_csv\nwrite_csv(table, path)\n"
              "reporting.write_json(path, record)\nfig.savefig(path)\nplot_accuracy_vs_eps(table, path)\n"
              "(out / 'a.md').write_text(text)\njson.dump(record, f)\ntable.to_csv(path, index=False)\n"
              "open(path, 'w')\nopen(path, mode='ab')\n"
              # not writers: text for the terminal, a reporting function, reading
              "to_markdown(table)\nwrite_attack_report(table, checks, setup, config, out)\ntable.to_csv()\n"
              "json.dumps(record)\nopen(path)\nopen(path, 'rb')\npath.read_text()\n")
    assert _writer_uses(ast.parse(source)) == [
        (1, "write_csv"), (2, "write_csv"), (3, "write_json"), (4, "savefig"), (5, "plot_accuracy_vs_eps"),
        (6, "write_text"), (7, "dump"), (8, "to_csv"), (9, "open"), (10, "open")]


def test_cli_writer_exceptions_are_still_needed() -> None:
    assert set(CLI_WRITER_EXCEPTIONS) <= set(MODULES)
    for module, allowed in CLI_WRITER_EXCEPTIONS.items():
        used = {name for _, name in _writer_uses(ast.parse(MODULES[module].read_text()))}
        assert set(allowed) <= used, f"{module} no longer uses {set(allowed) - used}; remove the exception"


#: Model names: for CLI choices, file names and registries, never to decide what a model is.
MODEL_NAMES = ("capsules", "capsules-small", "cnn")


#: Module or package -> {code as ``ast.unparse`` writes it: why it may still use a model name that way};
#: a package's entry covers the modules under it. Each entry is temporary and must be reasoned;
#: :func:`test_name_test_exceptions_are_still_needed` flags stale ones.
NAME_TEST_EXCEPTIONS: dict[str, dict[str, str]] = {
    # The matched pair's stage record (match-seed*.json) keys its two members by role, "capsules" and
    # "cnn", whatever the capsule model's name (capsules-small); the keys coincide with model names and
    # decide no model's kind. To be replaced by role constants by the owner of the study modules (the
    # record format on disk stays).
    "capsrobust.experiments.study": {
        "pair['capsules']": "role key of the matched pair's stage record, not a model name",
        "pair['cnn']": "role key of the matched pair's stage record, not a model name"},
    "capsrobust.reporting.study": {
        "p['capsules']": "role key of the matched pair's stage record, not a model name",
        "p['cnn']": "role key of the matched pair's stage record, not a model name"},
}


def _name_test_exceptions(module: str) -> set[str]:
    """The excepted code of ``module``: its own entry's and those of the packages above it."""
    return {code for owner, allowed in NAME_TEST_EXCEPTIONS.items()
            if module == owner or module.startswith(owner + ".") for code in allowed}


def _is_model_name(node: ast.AST) -> bool:
    """A model-name literal, or a tuple/list/set holding one."""
    elements = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return any(isinstance(e, ast.Constant) and e.value in MODEL_NAMES for e in elements)


def _name_tests(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, code) of comparisons with a model name, of subscripts by one (``per_seed["cnn"]``) and of
    ``.startswith("caps...")`` / ``("cnn...")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            if any(_is_model_name(o) for o in [node.left, *node.comparators]):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Subscript) and _is_model_name(node.slice):
            found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and node.args
              and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith(("caps", "cnn"))):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_model_kind_is_never_decided_by_comparing_names() -> None:
    """capsrobust.models.is_capsule_model (a model's ``score_kind``) decides; a name is only a name."""
    offenders = [f"{path.relative_to(ROOT)}:{line}: {code}" for module, path in MODULES.items()
                 for line, code in _name_tests(ast.parse(path.read_text()))
                 if code not in _name_test_exceptions(module)]
    assert not offenders, ("use capsrobust.models.is_capsule_model(model or name), or key by something that is "
                           "not a model name:\n" + "\n".join(offenders))


def test_a_name_test_is_caught() -> None:
    source = ('if config.model == "cnn":\n    pass\nok = name.startswith("capsules")\nx = m in ("cnn",)\n'
              'error = per_seed["cnn"]\ny = x["capsules-small"][0]\n'
              # not name tests: a model's own name as a value, a key that is no model name
              'build_model("cnn")\nrow["model"]\n')
    assert [line for line, _ in _name_tests(ast.parse(source))] == [1, 3, 4, 5, 6]


def test_name_test_exceptions_are_still_needed() -> None:
    for owner, allowed in NAME_TEST_EXCEPTIONS.items():
        covered = [m for m in MODULES if m == owner or m.startswith(owner + ".")]
        assert covered, f"{owner} is no module or package of ours; remove its exception"
        found = {code for m in covered for _, code in _name_tests(ast.parse(MODULES[m].read_text()))}
        assert set(allowed) <= found, f"{owner} no longer uses {set(allowed) - found}; remove the exception"
        assert all(reason.strip() for reason in allowed.values()), f"{owner}: give each exception its reason"


@pytest.mark.parametrize("source, expected", [
    ("from capsrobust.training.loop import train\n", ["capsrobust.training.loop"]),
    ("def f():\n    from capsrobust.evaluation.accuracy import error_rate\n", ["capsrobust.evaluation.accuracy"]),
    ("from capsrobust import reporting\n", ["capsrobust.reporting"]),
    ("from . import runs\nfrom .runs import device, train_or_reuse\n",
     ["capsrobust.experiments.runs", "capsrobust.experiments.runs"]),
])
def test_imports_are_found_inside_functions_and_resolved(tmp_path: Path, source: str, expected: list[str]) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source)
    assert [name for _, name in imports_of("capsrobust.experiments.probe", path)] == expected


def test_a_back_edge_is_caught(tmp_path: Path) -> None:
    """The check can fail: training importing evaluation (the edge issue 15 removed) is one."""
    path = tmp_path / "training.py"
    path.write_text("def validate():\n    from capsrobust.evaluation.accuracy import error_rate\n")
    (line, imported), = imports_of("capsrobust.training.loop", path)
    assert LAYERS.index(layer_of(imported)) > LAYERS.index(layer_of("capsrobust.training.loop"))

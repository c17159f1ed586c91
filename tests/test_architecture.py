"""The layers of docs/architecture.md hold: who may import whom, no module-level import cycle, and
the hypervisor registry agrees with the packages it names."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import vmforensics
from vmforensics import hypervisors, verify
from vmforensics.cli import main
from vmforensics.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vmforensics"
MODULES = {
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in PACKAGE.rglob("*.py")
}
SKELETON = re.compile(r"<!-- test: (\w+) -->\n```python\n(.*?)```", re.DOTALL)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, module_level_only: bool) -> set[str]:
    """The vmforensics modules ``path`` imports: all (also lazy and type-checking ones), or only
    those that run when it is imported."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # runs only for type checkers
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if module_level_only:
                    continue
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("vmforensics"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - child.level + 1], base])
                if base.startswith("vmforensics"):  # a submodule by its name, else the module itself
                    found.update(
                        f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in child.names
                    )
            visit(child, top)

    visit(tree, True)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _offenders(under: str, forbidden: tuple[str, ...]) -> list[str]:
    modules = _modules()
    return sorted(
        f"{name} imports {target}"
        for name, path in modules.items()
        if name == under or name.startswith(under + ".")
        for target in _imports(path, module_level_only=False)
        if target.startswith(forbidden)
    )


#: Known breaches of the layers, each to be removed by moving the code it needs below the layer.
KNOWN_BREACHES: set[str] = set()


def test_custody_imports_no_acquirer_hypervisor_or_cli() -> None:
    forbidden = ("vmforensics.acquire", "vmforensics.hypervisors", "vmforensics.cli")
    offenders = set(_offenders("vmforensics.custody", forbidden))
    assert offenders - KNOWN_BREACHES == set()
    assert KNOWN_BREACHES - offenders == set(), "fixed: drop it from KNOWN_BREACHES"


def test_images_import_no_acquirer_hypervisor_survey_or_cli() -> None:
    forbidden = ("vmforensics.acquire", "vmforensics.hypervisors", "vmforensics.survey", "vmforensics.cli")
    assert _offenders("vmforensics.images", forbidden) == []


def test_html_views_depend_on_the_models_not_on_the_acquirers() -> None:
    forbidden = ("vmforensics.acquire", "vmforensics.hypervisors", "vmforensics.survey", "vmforensics.cli")
    assert _offenders("vmforensics.reports", forbidden) == []


def test_no_hypervisor_package_imports_another() -> None:
    packages = sorted(p.name for p in (PACKAGE / "hypervisors").iterdir() if (p / "__init__.py").is_file())
    assert {"local", "vmware", "hyperv", "libvirt"} <= set(packages)
    offenders = []
    for name in packages:
        others = tuple(f"vmforensics.hypervisors.{other}" for other in packages if other != name)
        offenders += _offenders(f"vmforensics.hypervisors.{name}", others)
    assert offenders == []


def test_no_module_level_import_cycle() -> None:
    modules = _modules()
    graph = {
        name: {t for t in _imports(path, module_level_only=True) if t in modules and t != name}
        for name, path in modules.items()
    }
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert cycles == []


@pytest.mark.parametrize(
    "module", ["vmforensics.custody.models", "vmforensics.reports", "vmforensics.acquire.base"]
)
def test_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_registry_lists_every_hypervisor_package_and_its_names_load() -> None:
    names = [h.name for h in hypervisors.hypervisors()]
    assert names == list(hypervisors.PACKAGES)
    for record in hypervisors.hypervisors():
        acquirer = hypervisors.load(record.acquirer)
        assert acquirer.preserve_modes == record.preserve, record.name
        assert getattr(vmforensics, acquirer.__name__) is acquirer
        if record.survey:
            survey = hypervisors.load(record.survey)
            assert getattr(vmforensics, survey.__name__) is survey
        for cli in (record.acquire_cli, record.survey_cli):
            assert cli is None or callable(hypervisors.load(cli))


def test_unknown_hypervisor_name_is_a_usage_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match="known: local, vmware"):
        hypervisors.get("xen")


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("vmforensics.acquire.vmware", "VMwareAcquirer", "vmforensics.hypervisors.vmware.acquirer"),
        ("vmforensics.acquire.hyperv", "HyperVAcquirer", "vmforensics.hypervisors.hyperv.acquirer"),
        ("vmforensics.acquire.libvirt", "LibvirtAcquirer", "vmforensics.hypervisors.libvirt.acquirer"),
        ("vmforensics.acquire.local", "LocalAcquirer", "vmforensics.hypervisors.local.acquirer"),
        ("vmforensics.survey.vmware", "survey_vmware", "vmforensics.hypervisors.vmware.survey"),
        ("vmforensics.survey.hyperv", "survey_hyperv", "vmforensics.hypervisors.hyperv.survey"),
        ("vmforensics.survey.libvirt", "survey_libvirt", "vmforensics.hypervisors.libvirt.survey"),
        ("vmforensics.survey.local", "survey_local", "vmforensics.hypervisors.local.survey"),
    ],
)
def test_old_import_path_warns_and_is_the_moved_module(old: str, name: str, new: str) -> None:
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_module = __import__(old, fromlist=[name])
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == [
        f"{old} moved to {new}; the old path goes away in the next release"
    ]
    assert old_module is sys.modules[new]
    assert getattr(old_module, name) is getattr(sys.modules[new], name)


@pytest.fixture
def example_package(tmp_path, monkeypatch):
    """docs/writing-a-hypervisor.md's skeleton, written out as vmforensics.hypervisors.example."""
    blocks = dict(SKELETON.findall((ROOT / "docs" / "writing-a-hypervisor.md").read_text()))
    assert set(blocks) == {"init", "acquirer", "cli"}
    package = tmp_path / "plugins" / "example"
    package.mkdir(parents=True)
    for module, block in (("__init__", "init"), ("acquirer", "acquirer"), ("cli", "cli")):
        (package / f"{module}.py").write_text(blocks[block])
    monkeypatch.setattr(hypervisors, "__path__", [*hypervisors.__path__, str(package.parent)])
    monkeypatch.setattr(hypervisors, "PACKAGES", (*hypervisors.PACKAGES, "example"))
    yield
    for name in [m for m in sys.modules if m.startswith("vmforensics.hypervisors.example")]:
        del sys.modules[name]


def test_writing_a_hypervisor_skeleton_registers_and_acquires_through_the_cli(
    example_package, tmp_path, capsys
) -> None:
    folder = tmp_path / "vm01"
    folder.mkdir()
    (folder / "vm01.img").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (folder / "notes.txt").write_bytes(b"example notes\n")
    (folder / "passwd").symlink_to("/etc/passwd")  # not a regular file of the folder: left out
    assert hypervisors.get("example").title == "Example (one folder)"

    with pytest.raises(SystemExit):
        main(["acquire", "--help"])
    assert "every regular file of one folder" in capsys.readouterr().out

    out = tmp_path / "evidence"
    assert (
        main(
            [
                "acquire",
                "example",
                str(folder),
                "--out",
                str(out),
                "--case",
                "C-17",
                "--no-progress",
                "--json",
            ]
        )
        == 0
    )
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["source"]["kind"] == "example"
    expected = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (folder / "vm01.img", folder / "notes.txt")
    }
    assert {f["source_path"].rsplit("/", 1)[-1]: f["hashes"]["sha256"] for f in manifest["files"]} == expected
    assert {f["source_path"].rsplit("/", 1)[-1]: f["role"] for f in manifest["files"]} == {
        "vm01.img": "disk",
        "notes.txt": "other",
    }
    assert verify(out).ok

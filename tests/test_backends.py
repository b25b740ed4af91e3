"""`backend_class`: only a third-party package that is genuinely not installed becomes
BackendMissing ("pip install 'marl_diff[extra]'"); an import error inside marl_diff or a broken
install propagates as the ImportError it is, so it can never pass for a missing backend (which
tests may skip on)."""

from __future__ import annotations

import sys

import pytest

from marl_diff.envs import BACKENDS, backend_class
from marl_diff.errors import BackendMissing, missing_package

PACKAGE = "marl_diff_fake_backends"


@pytest.fixture
def fake_backend(tmp_path, monkeypatch):
    """fake_backend(source) -> backend name whose module (in a temporary package) is `source`."""
    package = tmp_path / PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    counter = iter(range(1000))

    def make(source: str) -> str:
        name = f"backend_{next(counter)}"
        (package / f"{name}.py").write_text(source + "\n\nclass Env:\n    pass\n")
        monkeypatch.setitem(BACKENDS, name, (f"{PACKAGE}.{name}:Env", "vmas"))
        return name

    yield make
    for module in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
        del sys.modules[module]


@pytest.mark.parametrize(
    "source, missing",
    [
        ("from marl_diff.nonexistent import Thing", "marl_diff.nonexistent"),
        ("import marl_diff.envs.nonexistent", "marl_diff.envs.nonexistent"),
        ("from marl_diff.errors import NoSuchError", "marl_diff.errors"),
    ],
    ids=["missing-project-module", "missing-project-submodule", "missing-project-name"],
)
def test_project_import_error_propagates(fake_backend, source, missing):
    name = fake_backend(source)
    with pytest.raises(ImportError) as info:  # BackendMissing is not an ImportError
        backend_class(name)
    assert info.value.name == missing


@pytest.mark.parametrize(
    "source",
    ["from json import no_such_name", "import json.no_such_submodule"],
    ids=["name-missing-from-installed-package", "submodule-missing-from-installed-package"],
)
def test_broken_third_party_install_propagates(fake_backend, source):
    name = fake_backend(source)
    with pytest.raises(ImportError):
        backend_class(name)


@pytest.mark.parametrize(
    "source",
    ["import marl_diff_absent_package_xyz", "from marl_diff_absent_package_xyz.sub import X"],
    ids=["package", "submodule"],
)
def test_absent_third_party_package_is_backend_missing(fake_backend, source):
    name = fake_backend(source)
    with pytest.raises(BackendMissing) as info:
        backend_class(name)
    message = str(info.value)
    assert f"the '{name}' backend needs a package that is not installed" in message
    assert "(marl_diff_absent_package_xyz)" in message
    assert "pip install 'marl_diff[vmas]'" in message
    assert info.value.__cause__ is None and "\n" not in message


def test_project_error_raised_by_import_module_propagates(monkeypatch):
    import importlib

    def fake_import(name, *args, **kwargs):
        raise ImportError("cannot import name 'X'", name="marl_diff.envs.base")

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(ImportError, match="cannot import name 'X'"):
        backend_class("vmas")


def test_missing_package_rules():
    absent = "marl_diff_absent_package_xyz"
    assert missing_package(ModuleNotFoundError(name=absent)) == absent
    assert missing_package(ModuleNotFoundError(name=f"{absent}.sub")) == absent
    assert missing_package(ModuleNotFoundError(name="json.nope")) is None  # json is there
    assert missing_package(ModuleNotFoundError(name="marl_diff.x")) is None
    assert missing_package(ModuleNotFoundError(name="marl_diff")) is None
    assert missing_package(ModuleNotFoundError("no name")) is None
    assert missing_package(ImportError(name=absent)) is None  # not a ModuleNotFoundError

"""The conftest's CI guard: with CI=true a test skipped because a module could not be imported
fails (a broken install must not pass as a few skips), except for what CI cannot have (Isaac
Lab / Isaac Sim, CUDA); without CI the same tests just skip."""

from __future__ import annotations

import importlib.util

import pytest

MODULE_SKIP = """
import pytest
pytest.importorskip("{module}")

def test_uses_it():
    pass
"""
TEST_SKIP = """
import pytest

def test_uses_it():
    pytest.importorskip("{module}")
"""
OTHER_SKIPS = """
import pytest

def test_reason_says_not_installed():
    pytest.skip("brax is not installed")

@pytest.mark.skipif(True, reason="a CUDA GPU is available")
def test_unrelated_skipif():
    pass

def test_plain_skip():
    pytest.skip("only meaningful on Windows")

@pytest.mark.xfail(reason="no module named anything, but an xfail")
def test_xfail():
    raise ImportError("x")
"""


@pytest.fixture
def run_inner(pytester, request, monkeypatch):
    """run_inner(source, ci) -> RunResult of an inner pytest session with the CI guard."""
    guard = type(request.config.pluginmanager.get_plugin("ci_skip_guard"))

    def _run(source: str, ci: bool):
        if ci:
            monkeypatch.setenv("CI", "true")
        else:
            monkeypatch.delenv("CI", raising=False)
        pytester.makepyfile(test_inner=source)
        return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:xdist", plugins=[guard()])

    return _run


MISSING = "marl_diff_no_such_package_xyz"
# a session whose only module is skipped at collection has no tests: exit code 5
PASSING = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_module_level_importorskip_fails_only_in_ci(run_inner, ci):
    result = run_inner(MODULE_SKIP.format(module=MISSING), ci)
    if ci:
        result.assert_outcomes(errors=1)  # a collection error: the run is interrupted
        result.stdout.fnmatch_lines(["*CI=true forbids this import skip*could not import*"])
        assert result.ret != 0
    else:
        result.assert_outcomes(skipped=1)
        assert result.ret in PASSING


@pytest.mark.parametrize("ci", [True, False], ids=["ci", "local"])
def test_importorskip_inside_a_test_fails_only_in_ci(run_inner, ci):
    result = run_inner(TEST_SKIP.format(module=MISSING), ci)
    if ci:
        result.assert_outcomes(failed=1)
        assert result.ret != 0
    else:
        result.assert_outcomes(skipped=1)
        assert result.ret in PASSING


@pytest.mark.parametrize("module", ["isaaclab", "isaacsim", "omni.isaac.core"])
@pytest.mark.parametrize("template", [MODULE_SKIP, TEST_SKIP], ids=["module", "test"])
def test_isaac_skips_stay_skips_in_ci(run_inner, module, template):
    if importlib.util.find_spec(module.split(".")[0]) is not None:
        pytest.skip(f"{module} is installed here, so nothing skips")
    result = run_inner(template.format(module=module), ci=True)
    result.assert_outcomes(skipped=1)
    assert result.ret in PASSING


def test_other_skip_reasons_in_ci(run_inner):
    result = run_inner(OTHER_SKIPS, ci=True)
    # "not installed" fails; a CUDA skipif, an unrelated skip and an xfail are left alone
    result.assert_outcomes(failed=1, skipped=2, xfailed=1)
    result.stdout.fnmatch_lines(["*FAILED*test_reason_says_not_installed*"])

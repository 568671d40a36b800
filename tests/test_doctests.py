"""Every docstring example in the package runs and passes (one test per module)."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest
from loguru import logger

import actor_orch

# Modules that import optional dependencies (Ray, CLI extras) are not doctested here.
SKIPPED = {"actor_orch.ray_executor", "actor_orch.cli"}


def package_modules() -> list[str]:
    names = [actor_orch.__name__]
    for info in pkgutil.walk_packages(actor_orch.__path__, prefix=f"{actor_orch.__name__}."):
        if info.name in SKIPPED or any(info.name.startswith(f"{s}.") for s in SKIPPED):
            continue
        names.append(info.name)
    return sorted(names)


MODULES = package_modules()


def test_module_discovery_finds_the_core_modules() -> None:
    for name in [
        "actor_orch",
        "actor_orch.types",
        "actor_orch.errors",
        "actor_orch.retry",
        "actor_orch.tools",
        "actor_orch.agent",
        "actor_orch.events",
        "actor_orch.models.echo",
        "actor_orch.models.scripted",
        "actor_orch.models.function",
    ]:
        assert name in MODULES
    assert not SKIPPED & set(MODULES)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_pass(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS, verbose=False)
    report = io.StringIO()
    try:
        for test in finder.find(module, module_name):
            runner.run(test, out=report.write)
    finally:
        # Examples may enable logging or start actors; leave the process as we found it.
        logger.disable("actor_orch")
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} doctest failure(s) in {module_name}:\n" + (
        report.getvalue()
    )

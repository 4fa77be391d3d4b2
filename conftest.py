"""pytest setup shared by tests/ and the readers' notebooks (book/chapters/*.ipynb, executed by nbmake).

nbmake starts a fresh kernel per notebook, which inherits this process's environment: the notebooks run in
``quick`` mode (the real code at a tiny scale) and are marked ``chapter`` so ``-m "not chapter"`` skips them.
"""

from __future__ import annotations

import os

import pytest


def _is_notebook(item: pytest.Item) -> bool:
    return str(item.fspath).endswith(".ipynb")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_notebook(item):
            item.add_marker(pytest.mark.chapter)


_saved: dict[str, str | None] = {}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _is_notebook(item):
        for key, value in (("LOPBOOK_MODE", "quick"), ("MUJOCO_GL", os.environ.get("MUJOCO_GL", "egl"))):
            _saved[key] = os.environ.get(key)
            os.environ[key] = value


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _is_notebook(item):
        for key, value in _saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _saved.clear()

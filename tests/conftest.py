"""Shared fixtures. Real node processes come from tests/procs.py and are always stopped."""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import NodeProcess, kill_all


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item, so teardown knows whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Safety net: no node outlives the test session, whatever went wrong."""
    kill_all()


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


NodeFactory = Callable[..., NodeProcess]


@pytest.fixture
def node_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NodeFactory]:
    """`node_factory(node_id=None, wait=True, timeout=30.0, data_dir=None, **NodeProcess kwargs)`.

    Starts a node in tmp_path/node<ID> (waiting until SERVING unless wait=False) and stops
    every node it made at teardown, printing their log tails when the test failed or a
    node crashed on its own.
    """
    nodes: list[NodeProcess] = []

    def make(
        *,
        node_id: int | None = None,
        wait: bool = True,
        timeout: float = 30.0,
        data_dir: Path | None = None,
        **kwargs: Any,
    ) -> NodeProcess:
        nid = node_id if node_id is not None else len(nodes) + 1
        node = NodeProcess(data_dir or tmp_path / f"node{nid}", node_id=nid, **kwargs)
        nodes.append(node)
        node.start()
        if wait:
            node.wait_ready(timeout)
        return node

    try:
        yield make
    finally:
        errors: list[BaseException] = []
        for node in reversed(nodes):
            crashed = node.exited_unexpectedly() and node.returncode != 0
            try:
                node.close()
            except BaseException as exc:
                errors.append(exc)
            if crashed or _failed(request):
                why = f"crashed with code {node.returncode}" if crashed else "test failed"
                sys.stderr.write(f"--- {node!r} ({why}), log {node.log_path}:\n{node.log_tail()}\n")
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One started, SERVING node shared by every test of a module, stopped after the last one.

    It runs with the environment overrides in the module's `NODE_ENV` dict, if it has one.
    Teardown fails unless the node exits with code 0, and shows its log tail then or when a
    test of the module failed. Tests that need a fresh node of their own use `node_factory`.
    """
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    proc = NodeProcess(tmp_path_factory.mktemp(name) / "node1", env=getattr(request.module, "NODE_ENV", None))
    failed_before = request.session.testsfailed
    try:
        proc.start_and_wait()
        yield proc
    finally:
        code = proc.close()
        assert code == 0, f"node exit code {code}; log:\n{proc.log_tail()}"
        if request.session.testsfailed > failed_before:
            sys.stderr.write(f"--- {proc!r} (a test failed), log {proc.log_path}:\n{proc.log_tail()}\n")

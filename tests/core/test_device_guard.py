"""A graph on cuda:N launches on cuda:N whatever the caller's current device (checked with fakes:
no GPU is needed to see the runtime switch devices)."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from tilewright.compiler import compile_graph_for_inputs
from tilewright.report import GraphReport
from tilewright.runtime.graph import cuda_index


def _compiled(fn: Any, *inputs: torch.Tensor) -> Any:
    gm = make_fx(fn)(*inputs)
    return compile_graph_for_inputs(gm, list(inputs), GraphReport("g"))


def test_cuda_index_reads_the_graphs_device() -> None:
    graph = _compiled(lambda x: x + 1, torch.randn(3)).graph
    assert cuda_index(graph) is None
    v = graph.inputs[0]
    v.type = dataclasses.replace(v.type, device=torch.device("cuda:1"))
    assert cuda_index(graph) == 1


def test_a_call_from_another_current_device_switches_to_the_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _compiled(lambda x: x * 2 + 1, torch.randn(5))
    entered: list[int] = []

    @contextlib.contextmanager
    def device(index: int) -> Iterator[None]:
        entered.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    compiled.cuda_index = 1  # as if its tensors were on cuda:1 while cuda:0 is current
    x = torch.randn(5)
    torch.testing.assert_close(compiled([x]), x * 2 + 1)
    assert entered == [1]
    compiled.cuda_index = 0  # already current: no switch
    compiled([x])
    assert entered == [1]

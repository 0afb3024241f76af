"""Fusion: partition the graph's compute nodes into kernel groups.

Every non-view node starts as its own group; views belong to no group (inside a kernel they
are index transforms, between kernels they are free aliases). Producer/consumer pairs are
then merged greedily, the pair that saves the most memory traffic first, when

- their iteration spaces are compatible (same element count; a reduction's rows or elements;
  a matmul's output for an epilogue),
- merging creates no cycle between groups (no other path from producer to consumer), and
- the merged group still generates a valid kernel (the builder is asked; anything it cannot
  express, e.g. a reduction result read at another row, is kept apart).

No node is ever duplicated into two groups, so heavy work (matmuls, reductions) is never
recomputed; inside a kernel only cheap pointwise values may be evaluated at several indices.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import networkx as nx

from ..ir.graph import Graph, Node, Value
from ..ir.registry import lookup
from ..schedule.group import ANCHORED, Group

log = logging.getLogger(__name__)

FUSABLE = ("pointwise", "reduction", "matmul", "conv")


@dataclass
class FusionResult:
    """Groups in execution order and the values that must be written to memory."""

    groups: list[Group]
    materialize: set[int]
    node_group: dict[int, Group] = field(default_factory=dict)


def producer_node(v: Value) -> Node | None:
    """The non-view node whose output ``v`` is, looking through views."""
    node = v.producer
    while node is not None and lookup(node.target).kind == "view":
        src = node.args[0]
        node = src.producer if isinstance(src, Value) else None
    return node


def _non_view_users(v: Value, out_ids: set[int]) -> tuple[list[Node], bool]:
    """Non-view users of ``v`` through view chains, and whether a view chain escapes as output."""
    users: list[Node] = []
    escapes = v.id in out_ids
    stack = [v]
    seen: set[int] = set()
    while stack:
        cur = stack.pop()
        if cur.id in seen:
            continue
        seen.add(cur.id)
        for u in cur.users:
            if lookup(u.target).kind == "view":
                for o in u.outputs:
                    if o.id in out_ids:
                        escapes = True
                    stack.append(o)
            else:
                users.append(u)
    return users, escapes


def materialized(nodes: list[Node], members: set[int], out_ids: set[int]) -> set[int]:
    """Outputs of ``nodes`` that are read outside the group or returned by the graph."""
    result: set[int] = set()
    for n in nodes:
        if lookup(n.target).extra.get("inplace"):  # the write into the input is the point
            result.update(o.id for o in n.outputs)
            continue
        for o in n.outputs:
            users, escapes = _non_view_users(o, out_ids)
            if escapes or any(u.id not in members for u in users):
                result.add(o.id)
    return result


BuildCheck = Callable[[Group, set[int]], str | None]
#: The lowering kind a target gives a node: ``pointwise``, ``reduction``, ``matmul``, ``conv``,
#: ``scatter``, ``view``, ``template`` or ``extern``.
KindOf = Callable[[Node], str]


def fuse(graph: Graph, can_build: BuildCheck, kind_of: KindOf) -> FusionResult:
    """Partition ``graph`` into groups.

    ``kind_of(node)`` is the target's lowering kind of a node; ``can_build(group, materialize)``
    returns None when the target can build the group's kernel, else the reason it cannot.
    """
    part = _initial_partition(graph, can_build, kind_of)
    rejected: set[tuple[int, int]] = set()
    while _merge_round(part, can_build, rejected) or _merge_siblings(part, can_build, rejected):
        pass
    return _ordered_result(part)


@dataclass
class _Partition:
    """The groups of a fusion in progress."""

    out_ids: set[int]
    #: node id -> position in the graph
    order: dict[int, int]
    groups: dict[int, Group]
    node_group: dict[int, Group]


def _initial_partition(graph: Graph, can_build: BuildCheck, kind_of: KindOf) -> _Partition:
    """Every non-view node in a group of its own (extern when the target cannot build it)."""
    out_ids = {v.id for v in graph.output_values()}
    order = {n.id: i for i, n in enumerate(graph.nodes)}
    groups: dict[int, Group] = {}
    node_group: dict[int, Group] = {}
    next_id = 0
    for n in graph.nodes:
        kind = kind_of(n)
        if kind == "view":
            continue
        g = Group(next_id, kind, [n], anchor=n if kind in ANCHORED else None)
        next_id += 1
        if kind in FUSABLE:
            reason = can_build(g, materialized(g.nodes, {n.id}, out_ids))
            if reason:
                g.kind, g.reason = "extern", reason
                g.anchor = None
        groups[g.id] = g
        node_group[n.id] = g
    return _Partition(out_ids, order, groups, node_group)


def _group_dag(part: _Partition) -> nx.DiGraph:
    """Dependencies between groups: producer -> consumer, and reader -> in-place writer."""
    dag = nx.DiGraph()
    dag.add_nodes_from(part.groups)
    node_group = part.node_group
    for g in part.groups.values():
        for n in g.nodes:
            for v in n.inputs:
                p = producer_node(v)
                if p is not None and p.id in node_group and node_group[p.id] is not g:
                    dag.add_edge(node_group[p.id].id, g.id)
            if lookup(n.target).extra.get("inplace") and isinstance(n.args[0], Value):
                # every other reader of the old contents runs before the in-place write
                readers, _ = _non_view_users(n.args[0], part.out_ids)
                for r in readers:
                    if r is not n and r.id in node_group and node_group[r.id] is not g:
                        dag.add_edge(node_group[r.id].id, g.id)
    return dag


def _fusion_kind(p: Group, c: Group) -> str | None:
    """The kind of producer ``p`` and consumer ``c`` merged, or None when they are not compatible."""
    if p.kind not in FUSABLE or c.kind not in FUSABLE:
        return None
    if any(lookup(n.target).extra.get("inplace") for n in p.nodes + c.nodes):
        return None  # in-place writes keep their own kernel, after every reader
    if c.kind in ANCHORED:
        return None  # no prologue fusion
    if p.kind in ANCHORED:
        if c.kind != "pointwise" or c.numel() != p.numel():
            return None
        return p.kind
    if p.kind == "pointwise" and c.kind == "pointwise":
        return "pointwise" if p.numel() == c.numel() else None
    if p.kind == "pointwise" and c.kind == "reduction":
        return "reduction" if p.numel() in (c.numel(), c.row_numel()) else None
    if p.kind == "reduction" and c.kind == "pointwise":
        return "reduction" if c.numel() in (p.numel(), p.row_numel()) else None
    if p.kind == "reduction" and c.kind == "reduction":
        return "reduction" if (p.numel(), p.row_numel()) == (c.numel(), c.row_numel()) or _complementary(p, c) else None
    return None


def _complementary(a: Group, b: Group) -> bool:
    """Reductions of one element count whose row counts multiply to it: one reduces the rows that
    the other keeps (a norm's row reduction and its weight/bias gradients' column sums, which the
    target may fold into the row kernel)."""
    return a.kind == b.kind == "reduction" and a.numel() == b.numel() and a.row_numel() * b.row_numel() == a.numel()


def _saved_bytes(p: Group, c: Group, out_ids: set[int]) -> int:
    """Memory traffic saved by merging ``p`` into its consumer ``c`` (a value no longer
    written and read back, or at least no longer read back)."""
    members = {n.id for n in p.nodes}
    cmembers = {n.id for n in c.nodes}
    total = 0
    for n in p.nodes:
        for o in n.outputs:
            users, escapes = _non_view_users(o, out_ids)
            if not any(u.id in cmembers for u in users):
                continue
            outside = escapes or any(u.id not in members | cmembers for u in users)
            total += o.type.numel * o.type.dtype.itemsize * (1 if outside else 2)
    return total


def _ranked_candidates(part: _Partition, dag: nx.DiGraph,
                       rejected: set[tuple[int, int]]) -> list[tuple[int, int, int, str]]:
    """Compatible (saved bytes, producer, consumer, merged kind) edges, most saved first."""
    candidates = []
    for pid, cid in dag.edges:
        if (pid, cid) in rejected:
            continue
        kind = _fusion_kind(part.groups[pid], part.groups[cid])
        if kind:
            candidates.append((_saved_bytes(part.groups[pid], part.groups[cid], part.out_ids),
                               pid, cid, kind))
    candidates.sort(key=lambda t: -t[0])
    return candidates


def _merge_round(part: _Partition, can_build: BuildCheck, rejected: set[tuple[int, int]]) -> bool:
    """Merge what one pass over the ranked candidates allows; returns whether anything merged.

    Pairs that cannot merge are added to ``rejected``.
    """
    dag = _group_dag(part)
    changed = False
    dirty: set[int] = set()
    for _, pid, cid, kind in _ranked_candidates(part, dag, rejected):
        if pid in dirty or cid in dirty:
            continue  # contracting an edge only changes reachability around its ends
        merged = _merged_group(part, dag, pid, cid, kind, can_build)
        if merged is None:
            rejected.add((pid, cid))
            continue
        _replace(part, pid, cid, merged, rejected)
        dirty |= {pid, cid}
        changed = True
    return changed


def _merge_siblings(part: _Partition, can_build: BuildCheck, rejected: set[tuple[int, int]]) -> bool:
    """Merge one complementary reduction group that shares an input with another group (a bias
    gradient's column sum of the incoming gradient, which the row kernel reads too) into it, when
    neither depends on the other; returns whether anything merged. Only for complementary
    reductions (see :func:`_complementary`): no other groups are fused without a producer edge."""
    dag = _group_dag(part)
    readers: dict[int, set[int]] = {}
    for g in part.groups.values():
        for n in g.nodes:
            for v in n.inputs:
                readers.setdefault(v.id, set()).add(g.id)
    for cid, c in part.groups.items():
        if c.kind != "reduction":
            continue
        members = {n.id for n in c.nodes}
        outside = [v for n in c.nodes for v in n.inputs if producer_node(v) is None or producer_node(v).id not in members]
        if not outside:
            continue
        for pid in sorted(set.union(*(readers.get(v.id, set()) for v in outside)) - {cid}):
            p = part.groups[pid]
            # square shapes (equal row counts) are left to producer edges: a target that tells row
            # layouts apart only by their counts would take the two reductions for one layout
            if (pid, cid) in rejected or not _complementary(p, c) or p.row_numel() == c.row_numel():
                continue
            if nx.has_path(dag, pid, cid) or nx.has_path(dag, cid, pid):
                continue
            merged = _merged_group(part, dag, pid, cid, "reduction", can_build)
            if merged is None:
                rejected.add((pid, cid))
                continue
            _replace(part, pid, cid, merged, rejected)
            return True
    return False


def _replace(part: _Partition, pid: int, cid: int, merged: Group, rejected: set[tuple[int, int]]) -> None:
    """Put ``merged`` in place of groups ``pid`` and ``cid`` (under ``pid``'s id)."""
    part.groups[pid] = merged
    del part.groups[cid]
    for n in merged.nodes:
        part.node_group[n.id] = merged
    # earlier verdicts about the two groups no longer hold for the merged one
    rejected -= {pair for pair in rejected if {pair[0], pair[1]} & {pid, cid}}


def _merged_group(part: _Partition, dag: nx.DiGraph, pid: int, cid: int, kind: str,
                  can_build: BuildCheck) -> Group | None:
    """Groups ``pid`` and ``cid`` as one group of ``kind``, or None when merging them would
    create a cycle or the target cannot build the result."""
    p, c = part.groups[pid], part.groups[cid]
    # a cycle would appear if another path leads from p to c
    others = [s for s in dag.successors(pid) if s != cid]
    if any(nx.has_path(dag, s, cid) for s in others):
        return None
    nodes = sorted(p.nodes + c.nodes, key=lambda n: part.order[n.id])
    anchor = p.anchor if kind in ANCHORED else None
    merged = Group(p.id, kind, nodes, anchor)
    members = {n.id for n in nodes}
    reason = can_build(merged, materialized(nodes, members, part.out_ids))
    if reason:
        log.debug("not fusing groups %d and %d: %s", pid, cid, reason)
        return None
    return merged


def _ordered_result(part: _Partition) -> FusionResult:
    """The groups in execution order (ties: graph order) and every value they materialize."""
    dag = _group_dag(part)
    ordered_ids = list(nx.lexicographical_topological_sort(
        dag, key=lambda gid: min(part.order[n.id] for n in part.groups[gid].nodes)))
    ordered = [part.groups[i] for i in ordered_ids]
    materialize: set[int] = set()
    for g in ordered:
        materialize |= materialized(g.nodes, {n.id for n in g.nodes}, part.out_ids)
    return FusionResult(ordered, materialize, part.node_group)

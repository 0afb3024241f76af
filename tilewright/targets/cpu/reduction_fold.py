"""Column sums folded into a row-reduction kernel: layer norm's and RMS norm's weight/bias gradients.

A norm's backward reduces each row (over the features) for the input gradient, and sums
``grad * x_hat`` and ``grad`` over the rows (the complementary dims) for the weight and bias
gradients. As separate kernels the column sums read ``grad`` (and a stored ``x_hat``) again; here
they ride on the row kernel's output pass, which already has every element value in a register.

The rows are cut into ``min(rows, 4 * threads)`` contiguous blocks (scheduled dynamically over the
threads). Each block adds its rows' values into a float partial per column, flushed into the block's
double partial every 8 rows (a float lane adds at most 8 values before it is widened, as in
:mod:`.reduction_vector`); after the parallel loop the block partials are added in block order into
the output. The summation order depends only on the thread count, not on which thread ran a block.
"""
from __future__ import annotations

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name, reduction_dims

#: rows a float column partial adds before it is flushed into the block's double partial
FLUSH_ROWS = 8
#: longest row whose column partials are kept on the stack
FOLD_LIMIT = 16384


def folded_reductions(reductions: list[Node]) -> list[Node]:
    """Float32 sums over exactly the dims the group's row reductions keep (the row reductions reduce
    the innermost dim alone); empty when there are none or no row reduction to ride on."""
    def dims_of(r: Node) -> tuple[int, ...]:
        return tuple(reduction_dims(r.target, r.args, r.kwargs, r.args[0].type.rank))

    rank = reductions[0].args[0].type.rank
    rows = [r for r in reductions if dims_of(r) == (rank - 1,)]
    if not rows or rank < 2:
        return []
    shape = tuple(rows[0].args[0].type.shape)
    kept = tuple(range(rank - 1))
    return [r for r in reductions if dims_of(r) == kept and tuple(r.args[0].type.shape) == shape
            and packet_name(r.target) == "aten.sum" and r.args[0].type.dtype == torch.float32
            and r.outputs[0].type.dtype == torch.float32 and not lookup(r.target).extra.get("mean")]


class FoldedColumns:
    """The folded column sums of :class:`~.reduction.ReductionSource` (mixed in; see module doc)."""

    def _classify_folded(self, n: Node, internal: list[Value]) -> None:  # type: ignore[no-untyped-def]
        """Check folded sum ``n``: it reads element values, and nothing in the group reads it."""
        out = n.outputs[0]
        if any(self.space.get(a.id) != "element" for a in internal):
            raise BuildError("a folded column sum reads a row value")
        if any(a.id == out.id for m in self.nodes for a in m.inputs):
            raise BuildError("a folded column sum is read inside its group")
        if out.type.numel != self.count or not out.type.is_contiguous():
            raise BuildError("a folded column sum is not one contiguous row of the features")
        if self.count > FOLD_LIMIT:
            raise BuildError(f"rows over {FOLD_LIMIT} elements keep no column partials")
        self.space[out.id], self.level[out.id] = "column", 0

    def _fold_lines(self, vector: list[str] | None, scalar: list[str]) -> None:  # type: ignore[no-untyped-def]
        """Append each folded sum's accumulation to the output pass's vector and scalar bodies."""
        e = f"e{len(self.element_shape) - 1}"
        for j, r in enumerate(self.folded):
            x = self.local[r.args[0].id]
            scalar.append(f"tw_cf{j}[{e}] += {x};")
            if vector is not None:
                vector.append(f"(tw_vf::load(&tw_cf{j}[{e}]) + {x}).store(&tw_cf{j}[{e}]);")

    def _folded_function(self, params: list[str], casts: list[str], split: list[str], body: list[str],  # type: ignore[no-untyped-def]
                         rows: str) -> str:
        """The kernel's function when it folds column sums (see module doc)."""
        count, nf, z = self._count, len(self.folded), self.sizes
        head = f"""extern "C" void {self.name}({', '.join(params + ['int64_t threads', z.param])}) {{
{chr(10).join(casts)}
{z.declarations()}"""
        outs = [f"out{self.outputs.index(r.outputs[0])}" for r in self.folded]
        partial = [f"    float tw_cf{j}[{count}] __attribute__((aligned(64)));" for j in range(nf)]
        partial += [f"    double* tw_cd{j} = &tw_cd[(tw_b * {nf} + {j}) * {count}];" for j in range(nf)]
        flush = [f"        for (int64_t c = 0; c < {count}; ++c) {{ tw_cd{j}[c] += (double)tw_cf{j}[c]; tw_cf{j}[c] = 0.0f; }}"
                 for j in range(nf)]
        zero = [f"    for (int64_t c = 0; c < {count}; ++c) tw_cf{j}[c] = 0.0f;" for j in range(nf)]
        combine = [f"    double tw_s{j} = 0;" for j in range(nf)]
        combine += [f"    for (int64_t b = 0; b < tw_nb; ++b) tw_s{j} += tw_cd[(b * {nf} + {j}) * {count} + c];"
                    for j in range(nf)]
        combine += [f"    {o}[c] = (float)tw_s{j};" for j, o in enumerate(outs)]
        nl = "\n"
        return f"""#include <vector>
{head}
  const int64_t tw_nt = tw_nthreads(threads);
  const int64_t tw_nb = {rows} < 4 * tw_nt ? {rows} : 4 * tw_nt;
  std::vector<double> tw_cdv((size_t)(tw_nb > 0 ? tw_nb : 1) * {nf} * {count}, 0.0);
  double* tw_cd = tw_cdv.data();
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(dynamic, 1) if(tw_nt > 1)
  for (int64_t tw_b = 0; tw_b < tw_nb; ++tw_b) {{
{nl.join(partial)}
{nl.join(zero)}
    const int64_t tw_r0 = {rows} * tw_b / tw_nb, tw_r1 = {rows} * (tw_b + 1) / tw_nb;
    for (int64_t r = tw_r0; r < tw_r1; ++r) {{
{nl.join('  ' + line for line in split)}
{nl.join('      ' + line for line in body)}
      if ((r - tw_r0) % {FLUSH_ROWS} == {FLUSH_ROWS - 1} || r == tw_r1 - 1) {{
{nl.join(flush)}
      }}
    }}
  }}
  for (int64_t c = 0; c < {count}; ++c) {{
{nl.join(combine)}
  }}
}}
"""


"""C++/OpenMP 2-D pooling for the CPU target: ``max_pool2d_with_indices``, its backward, ``avg_pool2d``.

Forward: one task per (plane, output row); each output element scans its window (padding,
stride, dilation, ``ceil_mode`` windows clipped to the input) with ATen's rule — the first
strictly larger value wins and a NaN always takes over — and stores the value and the flat
``h * W + w`` index of where it was. Backward: one task per plane (batch x channel): the plane of
the input gradient is zeroed, then every output gradient is added at its saved index in output
order, on one thread — deterministic, and the same sums in the same order as ATen's CPU kernel.
Saved indices are bounds-checked. Floating dtypes (float32, float64, bfloat16); any strides.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import packet_name
from ...schedule.space import Config
from .indexing import IndexCheck, operand_problem
from .scalar_ops import CPP_TYPES, load_code, storage_type, store_code

#: ops this module generates
POOL_OPS = ("aten.max_pool2d_with_indices", "aten.max_pool2d_with_indices_backward", "aten.avg_pool2d")
_FLOATS = (torch.float32, torch.float64, torch.bfloat16)


def _pair(v: Any, default: Any) -> tuple[int, int]:
    if v is None or v == []:
        v = default
    v = [v] if isinstance(v, int) else list(v)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


def _window(args: list[Any]) -> tuple[tuple[int, int], ...]:
    """kernel, stride, padding, dilation of a max-pool call (positional ATen arguments)."""
    kernel = _pair(args[0], None)
    stride = _pair(args[1] if len(args) > 1 else [], kernel)
    padding = _pair(args[2] if len(args) > 2 else 0, 0)
    dilation = _pair(args[3] if len(args) > 3 else 1, 1)
    return kernel, stride, padding, dilation


def supported_pool(node: Node) -> str | None:
    """None when this module generates ``node``, else why not."""
    if packet_name(node.target) not in POOL_OPS:
        return "not a pooling op"
    problem = operand_problem(node)
    if problem:
        return problem
    x = node.args[0]
    if not isinstance(x, Value) or x.type.rank not in (3, 4):
        return "pooling needs a 3-D or 4-D tensor"
    if x.type.dtype not in _FLOATS or any(v.type.dtype not in _FLOATS + (torch.int64,) for v in node.inputs):
        return f"{x.type.dtype} pooling is not generated"
    if any(v.type.rank not in (3, 4) for v in node.inputs + node.outputs):
        return "operands of other ranks"
    return None


def _plane_strides(v: Value) -> list[int]:
    """(batch, channel, h, w) strides of a 3-D or 4-D operand (batch stride 0 for 3-D)."""
    s = list(v.type.strides)
    return ([0] + s) if v.type.rank == 3 else s


class PoolSource:
    """The C++ function of one max-pool (forward or backward) node."""

    def __init__(self, name: str, node: Node) -> None:
        reason = supported_pool(node)
        if reason:
            raise BuildError(f"{node.op}: {reason}")
        self.name, self.nodes = name, [node]
        self.backward = packet_name(node.target).endswith("backward")
        self.inputs: list[Value] = node.inputs
        self.outputs: list[Value] = list(node.outputs)
        if self.backward:
            grad, x, indices = node.args[0], node.args[1], node.args[7]
            self.window = _window(list(node.args[2:6]))
            self.shape_in, self.shape_out = self._nchw(x), self._nchw(grad)
            self.checks = [IndexCheck(indices, self.shape_in[2] * self.shape_in[3], -1, wrap=False)]
            self.source = self._backward(grad, indices, node.outputs[0])
        else:
            x = node.args[0]
            self.checks = []
            self.shape_in, self.shape_out = self._nchw(x), self._nchw(node.outputs[0])
            if packet_name(node.target) == "aten.avg_pool2d":
                args = list(node.args[1:4])
                self.window = _window(args + [[], 0][len(args) - 1:] + [1])  # no dilation
                self.source = self._average(x, node.outputs[0], node)
            else:
                self.window = _window(list(node.args[1:5]))
                self.source = self._forward(x, node.outputs[0], node.outputs[1])
        self.planes = self.shape_out[0] * self.shape_out[1]
        self.numel = math.prod(self.shape_out) * self.window[0][0] * self.window[0][1]
        self.nbytes = sum(v.type.numel * v.type.dtype.itemsize for v in self.inputs + self.outputs)

    @staticmethod
    def _nchw(v: Value) -> list[int]:
        return ([1] + list(v.type.shape)) if v.type.rank == 3 else list(v.type.shape)

    def launch_args(self, config: Config) -> list[int]:
        """Scalar arguments after the tensors: the thread count."""
        return [int(config["threads"])]

    def _in(self, v: Value) -> str:
        return f"in{next(i for i, u in enumerate(self.inputs) if u.id == v.id)}"

    def _params(self) -> str:
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))]
        params += [f"void* p_out{i}" for i in range(len(self.outputs))]
        return ", ".join(params + ["int64_t threads"])

    def _casts(self) -> str:
        lines = []
        for i, v in enumerate(self.inputs):
            t = storage_type(v.type.dtype)
            lines.append(f"  const {t}* in{i} = (const {t}*)p_in{i};")
        for i, v in enumerate(self.outputs):
            t = storage_type(v.type.dtype)
            lines.append(f"  {t}* out{i} = ({t}*)p_out{i};")
        return "\n".join(lines)

    def _forward(self, x: Value, values: Value, indices: Value) -> str:
        (kh, _), (sh, _), (ph, _), (dh, _) = self.window
        _, channels, height, _ = self.shape_in
        oh_n = self.shape_out[2]
        xs, vs, js = _plane_strides(x), _plane_strides(values), _plane_strides(indices)
        return f"""extern "C" void {self.name}({self._params()}) {{
{self._casts()}
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1)
  for (int64_t task = 0; task < INT64_C({math.prod(self.shape_out[:3])}); ++task) {{
    const int64_t oh = task % {oh_n}, plane = task / {oh_n};
    const int64_t n = plane / {channels}, c = plane % {channels};
    const int64_t xb = n * INT64_C({xs[0]}) + c * INT64_C({xs[1]});
    const int64_t vb = n * INT64_C({vs[0]}) + c * INT64_C({vs[1]}) + oh * INT64_C({vs[2]});
    const int64_t jb = n * INT64_C({js[0]}) + c * INT64_C({js[1]}) + oh * INT64_C({js[2]});
    int64_t ih0 = oh * {sh} - {ph};
    const int64_t ih1 = ih0 + {(kh - 1) * dh + 1} < {height} ? ih0 + {(kh - 1) * dh + 1} : {height};
    while (ih0 < 0) ih0 += {dh};
{self._columns(x, values, indices)}
  }}
}}
"""

    def _columns(self, x: Value, values: Value, indices: Value) -> str:
        """The loops over one output row: the border columns (windows clipped by the padding) as a
        scalar loop, the interior columns as one ``omp simd`` loop (no clipping: every lane scans the
        same window shape, unrolled along the row)."""
        (_, kw), (_, sw), (_, pw), (dh, dw) = self.window
        width, ow_n = self.shape_in[3], self.shape_out[3]
        xs, vs, js = _plane_strides(x), _plane_strides(values), _plane_strides(indices)
        ct = CPP_TYPES[x.type.dtype]
        lo = min(ow_n, -(-pw // sw))
        hi = max(lo, min(ow_n, (width - 1 - (kw - 1) * dw + pw) // sw + 1))
        store_v = f"out0[vb + ow * INT64_C({vs[3]})] = {store_code(values.type.dtype, 'm')};"
        store_i = f"out1[jb + ow * INT64_C({js[3]})] = best;"
        load = load_code(x.type.dtype, f"{self._in(x)}[xb + ih * INT64_C({xs[2]}) + iw * INT64_C({xs[3]})]")
        clipped = f"""
      int64_t iw0 = ow * {sw} - {pw};
      const int64_t iw1 = iw0 + {(kw - 1) * dw + 1} < {width} ? iw0 + {(kw - 1) * dw + 1} : {width};
      while (iw0 < 0) iw0 += {dw};
      int64_t best = ih0 * {width} + iw0;
      {ct} m = -std::numeric_limits<{ct}>::infinity();
      for (int64_t ih = ih0; ih < ih1; ih += {dh})
        for (int64_t iw = iw0; iw < iw1; iw += {dw}) {{
          const {ct} v = {load};
          if (v > m || v != v) {{ m = v; best = ih * {width} + iw; }}
        }}
      {store_v}
      {store_i}"""
        border = "".join(f"    for (int64_t ow = {a}; ow < {b}; ++ow) {{{clipped}\n    }}\n"
                         for a, b in ((0, lo), (hi, ow_n)) if a < b)
        taps = "\n".join(f"""        {{ const int64_t iw = iw0 + {kx * dw}; const {ct} v = {load};
          const bool take = (v > m) | (v != v); m = take ? v : m; best = take ? ih * {width} + iw : best; }}"""
                         for kx in range(kw))
        interior = f"""    #pragma omp simd
    for (int64_t ow = {lo}; ow < {hi}; ++ow) {{
      const int64_t iw0 = ow * {sw} - {pw};
      int64_t best = ih0 * {width} + iw0;
      {ct} m = -std::numeric_limits<{ct}>::infinity();
      for (int64_t ih = ih0; ih < ih1; ih += {dh}) {{
{taps}
      }}
      {store_v}
      {store_i}
    }}"""
        return border + (interior if lo < hi else "")

    def _average(self, x: Value, out: Value, node: Node) -> str:
        """avg_pool2d as ATen's CPU kernel computes it: the window's sum in row order (float for
        float/bfloat16), divided by the divisor override, the padded window size or the count."""
        (kh, kw), (sh, sw), (ph, pw), _ = self.window
        _, channels, height, width = self.shape_in
        oh_n, ow_n = self.shape_out[2], self.shape_out[3]
        include_pad = bool(node.args[5]) if len(node.args) > 5 else bool(node.kwargs.get("count_include_pad", True))
        override = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
        xs, os_ = _plane_strides(x), _plane_strides(out)
        ct = CPP_TYPES[x.type.dtype]
        load = load_code(x.type.dtype, f"{self._in(x)}[xb + ih * INT64_C({xs[2]}) + iw * INT64_C({xs[3]})]")
        divide = (f"INT64_C({int(override)})" if override else
                  "pool" if include_pad else "(ih1 - ih0) * (iw1 - iw0)")
        return f"""extern "C" void {self.name}({self._params()}) {{
{self._casts()}
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1)
  for (int64_t task = 0; task < INT64_C({math.prod(self.shape_out[:3])}); ++task) {{
    const int64_t oh = task % {oh_n}, plane = task / {oh_n};
    const int64_t n = plane / {channels}, c = plane % {channels};
    const int64_t xb = n * INT64_C({xs[0]}) + c * INT64_C({xs[1]});
    const int64_t ob = n * INT64_C({os_[0]}) + c * INT64_C({os_[1]}) + oh * INT64_C({os_[2]});
    for (int64_t ow = 0; ow < {ow_n}; ++ow) {{
      int64_t ih0 = oh * {sh} - {ph}, iw0 = ow * {sw} - {pw};
      int64_t ih1 = ih0 + {kh} < {height + ph} ? ih0 + {kh} : {height + ph};
      int64_t iw1 = iw0 + {kw} < {width + pw} ? iw0 + {kw} : {width + pw};
      const int64_t pool = (ih1 - ih0) * (iw1 - iw0);
      ih0 = ih0 > 0 ? ih0 : 0; iw0 = iw0 > 0 ? iw0 : 0;
      ih1 = ih1 < {height} ? ih1 : {height}; iw1 = iw1 < {width} ? iw1 : {width};
      {ct} sum = 0;
      for (int64_t ih = ih0; ih < ih1; ++ih)
        for (int64_t iw = iw0; iw < iw1; ++iw) sum += {load};
      const {ct} avg = (ih0 >= ih1 || iw0 >= iw1) ? ({ct})0 : sum / ({ct})({divide});
      out0[ob + ow * INT64_C({os_[3]})] = {store_code(out.type.dtype, "avg")};
    }}
  }}
}}
"""

    def _backward(self, grad: Value, indices: Value, out: Value) -> str:
        _, channels, height, width = self.shape_in
        _, _, oh_n, ow_n = self.shape_out
        gs, js, os_ = _plane_strides(grad), _plane_strides(indices), _plane_strides(out)
        ct, dt = CPP_TYPES[out.type.dtype], out.type.dtype
        target = f"out0[ob + (at / {width}) * INT64_C({os_[2]}) + (at % {width}) * INT64_C({os_[3]})]"
        grad_value = load_code(grad.type.dtype, f"{self._in(grad)}[gb + oh * INT64_C({gs[2]}) + ow * INT64_C({gs[3]})]")
        add = store_code(dt, f"({ct})({load_code(dt, target)} + ({ct}){grad_value})")
        zero = store_code(dt, f"({ct})0")
        return f"""extern "C" int64_t {self.name}({self._params()}) {{
{self._casts()}
  int64_t status = 0;
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(static) if(tw_nthreads(threads) > 1) reduction(|:status)
  for (int64_t plane = 0; plane < INT64_C({self.shape_in[0] * channels}); ++plane) {{
    const int64_t n = plane / {channels}, c = plane % {channels};
    const int64_t ob = n * INT64_C({os_[0]}) + c * INT64_C({os_[1]});
    const int64_t gb = n * INT64_C({gs[0]}) + c * INT64_C({gs[1]});
    const int64_t jb = n * INT64_C({js[0]}) + c * INT64_C({js[1]});
    for (int64_t h = 0; h < {height}; ++h)
      for (int64_t w = 0; w < {width}; ++w) out0[ob + h * INT64_C({os_[2]}) + w * INT64_C({os_[3]})] = {zero};
    for (int64_t oh = 0; oh < {oh_n}; ++oh) {{
      for (int64_t ow = 0; ow < {ow_n}; ++ow) {{
        const int64_t at = {self._in(indices)}[jb + oh * INT64_C({js[2]}) + ow * INT64_C({js[3]})];
        if (at == -1) continue;
        if ((uint64_t)at >= UINT64_C({height * width})) {{ status = 1; continue; }}
        {target} = {add};
      }}
    }}
  }}
  return status;
}}
"""

"""Tests of the torch-dialect MLIR frontend (tilewright.frontend.mlir) and the export helper.

Model round trips: tiny ``transformers`` models exported with torch-mlir, imported by
tilewright, run and compared with eager on the same inputs; and the MLIR path must reach the
same key ops (attention's bmm/_softmax, addmm, layer/batch norm, conv) as the FX path.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tilewright.frontend import mlir as tw_mlir
from tilewright.frontend.mlir.export import ExportError, export_module, export_to_mlir
from tilewright.frontend.mlir import (
    MlirExtraMissingError,
    MlirImportError,
    MlirOpError,
    compile_mlir,
    import_mlir,
    load_mlir_model,
    parse_input_shapes,
)

DATA = Path(__file__).parent / "data"

try:
    import torch_mlir  # noqa: F401
    HAVE_TORCH_MLIR = True
except ImportError:
    HAVE_TORCH_MLIR = False
needs_torch_mlir = pytest.mark.skipif(not HAVE_TORCH_MLIR, reason="needs the 'mlir' extra (torch-mlir)")


# ---------------------------------------------------------------------- missing extra
@pytest.fixture
def no_torch_mlir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import torch_mlir`` fail as if the extra were not installed."""
    for name in [m for m in sys.modules if m == "torch_mlir" or m.startswith("torch_mlir.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch_mlir", None)


@pytest.mark.parametrize("entry", ["import_mlir", "compile_mlir", "load_mlir_model", "export_to_mlir",
                                   "tilewright.compile_mlir"])
def test_missing_extra_says_how_to_install(no_torch_mlir: None, entry: str) -> None:
    import tilewright

    path = DATA / "linear_dynamic.mlir"
    calls = {
        "tilewright.compile_mlir": lambda: tilewright.compile_mlir(path),
        "import_mlir": lambda: import_mlir(path),
        "compile_mlir": lambda: compile_mlir(path),
        "load_mlir_model": lambda: load_mlir_model(path, "2x4"),
        "export_to_mlir": lambda: export_to_mlir(torch.nn.ReLU(), (torch.randn(2),)),
    }
    with pytest.raises(MlirExtraMissingError, match=r"pip install 'tilewright\[mlir\]'"):
        calls[entry]()


def test_missing_extra_is_an_import_error() -> None:
    assert issubclass(MlirExtraMissingError, ImportError)


# ---------------------------------------------------------------------- input shapes
def test_parse_input_shapes() -> None:
    assert parse_input_shapes("1x16,1x16") == [(1, 16), (1, 16)]
    assert parse_input_shapes(" 2x3x4 , scalar") == [(2, 3, 4), ()]
    assert parse_input_shapes([[1, 2]]) == [(1, 2)]
    assert parse_input_shapes(None) is None
    with pytest.raises(ValueError, match="1xa"):
        parse_input_shapes("1xa")


# ---------------------------------------------------------------------- error cases
@needs_torch_mlir
def test_unknown_op_names_op_and_location() -> None:
    with pytest.raises(MlirOpError) as info:
        import_mlir(DATA / "unknown_op.mlir")
    msg = str(info.value)
    assert "mylib.frobnicate" in msg
    assert 'unknown_op.mlir":5:10' in msg
    assert info.value.location.endswith(':5:10)')


@needs_torch_mlir
def test_foreign_dialect_op_is_rejected_by_name() -> None:
    with pytest.raises(MlirOpError, match=r"arith\.constant.*foreign_dialect\.mlir\":4:10"):
        import_mlir(DATA / "foreign_dialect.mlir")


@needs_torch_mlir
def test_malformed_file_is_a_clear_error() -> None:
    with pytest.raises(MlirImportError, match=r"malformed\.mlir.*not valid torch-dialect MLIR") as info:
        import_mlir(DATA / "malformed.mlir")
    assert 'malformed.mlir":4:' in str(info.value)


@needs_torch_mlir
def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        import_mlir(DATA / "no_such_file.mlir")


@needs_torch_mlir
def test_wrong_declared_type_is_not_silently_accepted() -> None:
    with pytest.raises(MlirOpError, match=r"transpose\.int.*wrong_type\.mlir\":7:10.*\[3, 2\]"):
        import_mlir(DATA / "wrong_type.mlir")


@needs_torch_mlir
def test_generic_op_with_torch_equivalent_becomes_extern_call() -> None:
    fn = compile_mlir(DATA / "extern_op.mlir")
    x = torch.randn(4, 5)
    torch.testing.assert_close(fn(x), torch.special.erfcx(x))


# ---------------------------------------------------------------------- hand-written module
@needs_torch_mlir
def test_handwritten_dynamic_module_matches_torch() -> None:
    fn = compile_mlir(DATA / "linear_dynamic.mlir", input_shapes="5x4")
    w = torch.tensor([[1.0, 0.5, -1.0, 2.0], [0.0, 1.0, 1.0, -0.5], [-2.0, 0.25, 0.0, 1.0]])
    b = torch.tensor([0.1, -0.2, 0.3])
    for batch in (5, 7):  # the dynamic dim takes any size
        x = torch.randn(batch, 4)
        out, sm = fn(x)
        y = x @ w.T + b
        torch.testing.assert_close(out, torch.relu(y) * 2)
        torch.testing.assert_close(sm, torch.softmax(y, -1))


@needs_torch_mlir
def test_recomposition_gives_fx_ops() -> None:
    imported = import_mlir(DATA / "linear_dynamic.mlir", input_shapes="5x4")
    targets = {n.target for n in imported.graph_module.graph.nodes}
    assert torch.ops.aten.addmm.default in targets
    assert torch.ops.aten._softmax.default in targets
    assert torch.ops.aten.max.dim not in targets and torch.ops.aten.mul.Scalar in targets
    node = next(n for n in imported.graph_module.graph.nodes if n.target is torch.ops.aten._softmax.default)
    assert 'linear_dynamic.mlir":' in node.meta["mlir_loc"]
    assert tuple(node.meta["val"].shape) == (5, 3)


@needs_torch_mlir
def test_recomposition_near_miss_is_left_alone() -> None:
    imported = import_mlir(DATA / "softmax_near_miss.mlir")
    targets = [n.target for n in imported.graph_module.graph.nodes]
    assert torch.ops.aten._softmax.default not in targets and torch.ops.aten.exp.default in targets
    x = torch.randn(2, 5)
    sm, e = compile_mlir(DATA / "softmax_near_miss.mlir")(x)
    torch.testing.assert_close(sm, torch.softmax(x, -1))
    torch.testing.assert_close(e, torch.exp(x - x.amax(-1, keepdim=True)))


@needs_torch_mlir
def test_dynamic_dims_need_input_shapes() -> None:
    with pytest.raises(ValueError, match="--input-shapes"):
        load_mlir_model(DATA / "linear_dynamic.mlir")
    with pytest.raises(ValueError, match="does not fit"):
        load_mlir_model(DATA / "linear_dynamic.mlir", "5x3")
    gm, inputs = load_mlir_model(DATA / "linear_dynamic.mlir", "6x4")
    assert [tuple(t.shape) for t in inputs] == [(6, 4)]
    assert isinstance(gm, torch.fx.GraphModule) and len(gm(*inputs)) == 2


@needs_torch_mlir
def test_compile_mlir_checks_inputs() -> None:
    fn = compile_mlir(DATA / "linear_dynamic.mlir")
    with pytest.raises(TypeError, match="takes 1 tensors"):
        fn(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(TypeError, match="dtype"):
        fn(torch.randn(2, 4, dtype=torch.float64))


# ---------------------------------------------------------------------- module objects, resources
class _Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.fc2 = torch.nn.Linear(8, 3)
        self.register_buffer("scale", torch.tensor([1.0, 2.0, 3.0]))

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.nn.functional.gelu(self.fc1(x))
        y = torch.log_softmax(self.fc2(h), -1) * self.scale
        return y, torch.cat([y[idx], x[:, :3].to(torch.float64).float()], 0)


@needs_torch_mlir
def test_module_object_and_file_with_dense_resources(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Small().eval()
    inputs = (torch.randn(4, 6), torch.tensor([3, 0]))
    module = export_to_mlir(model, inputs)
    text = str(module)
    assert "dense_resource<" in text  # weights are dense_resource blobs
    path = tmp_path / "small.mlir"
    path.write_text(text)
    with torch.no_grad():
        want = model(*inputs)
    for source in (module, path, text):
        got = compile_mlir(source)(*inputs)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)


# ---------------------------------------------------------------------- transformers models
def _tiny_model(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 8))
    if name == "bert":
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=32)
        return transformers.BertModel(cfg), (ids,)
    if name == "llama":
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       num_key_value_heads=1, intermediate_size=64, max_position_embeddings=32)
        return transformers.LlamaForCausalLM(cfg), (ids,)
    if name == "vit":
        cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64)
        return transformers.ViTModel(cfg), (torch.randn(2, 3, 16, 16),)
    if name == "resnet":
        cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)
        return transformers.ResNetModel(cfg), (torch.randn(2, 3, 32, 32),)
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                      bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg), (ids,)
    raise KeyError(name)


def _eager(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    kwargs = {"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", False) else {}
    with torch.no_grad():
        return torch.utils._pytree.tree_leaves(model(*inputs, **kwargs))


_CACHE: dict[str, object] = {}


def _exported(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], object]:
    if name not in _CACHE:
        model, inputs = _tiny_model(name)
        model.eval()
        _CACHE[name] = (model, inputs, export_to_mlir(model, inputs))
    return _CACHE[name]  # type: ignore[return-value]


MODELS = ["bert", "llama", "vit", "resnet", "gpt2"]


def _mlir_run(name: str) -> tuple[object, list[torch.Tensor]]:
    """Compile the model's MLIR once; its report and outputs on the export inputs (cached)."""
    key = f"{name}/run"
    if key not in _CACHE:
        from tilewright.report import collect

        model, inputs, module = _exported(name)
        fn = compile_mlir(module)
        with collect() as report:
            out = fn(*inputs)
        _CACHE[key] = (fn, report, list(out) if isinstance(out, tuple) else [out])
    return _CACHE[key]  # type: ignore[return-value]


@needs_torch_mlir
@pytest.mark.parametrize("name", MODELS)
def test_model_round_trip_matches_eager(name: str) -> None:
    model, inputs, _ = _exported(name)
    fn, _, got = _mlir_run(name)
    want = _eager(model, inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # other inputs of the same shape: nothing was specialised on the export inputs
    other = tuple(torch.randint(0, 64, t.shape) if not t.is_floating_point() else torch.randn(t.shape)
                  for t in inputs)
    for g, w in zip(torch.utils._pytree.tree_leaves(fn(*other)), _eager(model, other)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@needs_torch_mlir
@pytest.mark.parametrize("name", MODELS)
def test_mlir_path_fuses_like_the_fx_path(name: str) -> None:
    """Same attention blocks (count and kind), same fallbacks, same coverage as the FX path."""
    from tilewright.frontend.api import explain

    model, inputs, _ = _exported(name)
    fx_report = explain(model, *inputs)
    _, mlir_report, _ = _mlir_run(name)
    assert mlir_report.graphs and mlir_report.graphs[0].mode == "interpreter"
    assert mlir_report.attention_fused == fx_report.attention_fused
    assert mlir_report.attention_fused == (0 if name == "resnet" else 2)

    def kinds(report: object) -> list[tuple[object, ...]]:
        return sorted((b["causal"], b["causal_offset"], b["mask_kind"], b["bias_kind"], b["gqa_ratio"])
                      for g in report.graphs for b in g.attention_blocks)

    assert kinds(mlir_report) == kinds(fx_report)
    assert {f["op"] for f in mlir_report.fallbacks} == {f["op"] for f in fx_report.fallbacks}
    # NOTE: torch-mlir's graph has a few fewer view/no-op compute ops, so the ratio moves a hair
    assert mlir_report.coverage == pytest.approx(fx_report.coverage, abs=0.01)


@needs_torch_mlir
def test_dynamic_batch_module_is_specialised_per_shape() -> None:
    """A module exported with a dynamic batch dim runs at any batch, attention fused each time."""
    from tilewright.report import collect

    model, _ = _tiny_model("bert")
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=16)
    module = export_to_mlir(model, (torch.randint(0, 64, (2, 8)),), dynamic_shapes=({0: batch},))
    fn = compile_mlir(module, input_shapes="3x8")
    assert fn.imported.input_types[0].shape == (None, 8)
    for b in (1, 3):
        x = torch.randint(0, 64, (b, 8))
        with collect() as report:
            got = fn(x)
        for g, w in zip(got, _eager(model, (x,))):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
        assert report.attention_fused == 2


@needs_torch_mlir
def test_raw_output_type_imports_and_fuses_attention() -> None:
    """``output_type="raw"`` keeps more composite ops; it imports and fuses the same way."""
    from tilewright.report import collect

    model, inputs = _tiny_model("bert")
    model.eval()
    module = export_to_mlir(model, inputs, output_type="raw")
    with collect() as report:
        got = compile_mlir(module)(*inputs)
    for g, w in zip(got, _eager(model, inputs)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert report.attention_fused == 2


@needs_torch_mlir
def test_retarget_moves_constants_and_device_arguments() -> None:
    """CUDA inputs get a graph whose weights and created tensors (arange...) are on CUDA too."""
    from tilewright.frontend.mlir.compile import retarget

    model, inputs, module = _exported("llama")
    gm = import_mlir(module).graph_module
    assert any(isinstance(a, torch.device) for n in gm.graph.nodes for a in n.kwargs.values())
    moved = retarget(gm, torch.device("meta"))
    assert all(b.device.type == "meta" for b in moved.buffers())
    outs = moved(*(t.to("meta") for t in inputs))
    assert [o.device.type for o in outs] == ["meta"]
    assert [o.shape for o in outs] == [w.shape for w in _eager(model, inputs)]
    assert all(b.device.type == "cpu" for b in gm.buffers())  # the original is untouched


# ---------------------------------------------------------------------- export helper
class _NonPersistent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("offset", torch.arange(4.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.offset


def test_export_module_keeps_model_unchanged() -> None:
    model = _NonPersistent()
    program = export_module(model, (torch.randn(4),))
    assert "offset" in program.state_dict
    assert model._non_persistent_buffers_set == {"offset"}
    assert "offset" not in model.state_dict()


@needs_torch_mlir
def test_export_to_mlir_handles_non_persistent_buffers() -> None:
    model = _NonPersistent()
    x = torch.randn(4)
    torch.testing.assert_close(compile_mlir(export_to_mlir(model, (x,)))(x), model(x))


class _ViewOfTranspose(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).view(-1) * 2


def test_export_retries_view_as_reshape() -> None:
    x = torch.randn(3, 4)
    program = export_module(_ViewOfTranspose(), (x,))
    torch.testing.assert_close(program.module()(x), x.transpose(0, 1).reshape(-1) * 2)
    assert torch.Tensor.view is not None and torch.randn(2, 3).view(6).shape == (6,)


class _DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum().item() > 0 else x


def test_export_error_lists_every_attempt() -> None:
    with pytest.raises(ExportError) as info:
        export_module(_DataDependent(), (torch.randn(3),))
    assert [name for name, _ in info.value.attempts] == [
        "non-strict", "non-strict, Tensor.view as reshape", "strict"]


def test_module_exports_public_api() -> None:
    for name in ("compile_mlir", "load_mlir_model", "import_mlir", "parse_input_shapes"):
        assert callable(getattr(tw_mlir, name))


# ---------------------------------------------------------------------- CLI
@needs_torch_mlir
def test_cli_explain_accepts_mlir_with_input_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    from tilewright.cli import main

    assert main(["explain", str(DATA / "linear_dynamic.mlir"), "--input-shapes", "3x4"]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "fallbacks" not in out

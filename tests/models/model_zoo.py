"""Tiny Hugging Face models with random weights (nothing downloaded) for end-to-end tests."""
from __future__ import annotations

from typing import Any, Callable

import torch


def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def gpt2(attn: str = "eager") -> tuple[torch.nn.Module, tuple[Any, ...], int]:
    """GPT-2 LM head model, 2 layers."""
    import transformers

    _quiet()
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=101,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg), (torch.randint(0, 101, (2, 7)),), 2


def bert(attn: str = "eager") -> tuple[torch.nn.Module, tuple[Any, ...], int]:
    """BERT encoder, 2 layers, with a padding attention mask."""
    import transformers

    _quiet()
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=37, num_attention_heads=2,
                                  vocab_size=101, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0, attn_implementation=attn)
    ids = torch.randint(0, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    return transformers.BertModel(cfg), (ids, mask), 2


def llama(attn: str = "eager") -> tuple[torch.nn.Module, tuple[Any, ...], int]:
    """LLaMA with grouped-query attention (4 query heads, 2 key/value heads), 2 layers."""
    import transformers

    _quiet()
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=101, max_position_embeddings=32,
                                   attn_implementation=attn)
    return transformers.LlamaForCausalLM(cfg), (torch.randint(0, 101, (2, 7)),), 2


def vit(attn: str = "eager") -> tuple[torch.nn.Module, tuple[Any, ...], int]:
    """ViT encoder on 16x16 images with 4x4 patches, 2 layers."""
    import transformers

    _quiet()
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=37, num_attention_heads=2,
                                 image_size=16, patch_size=4, num_channels=3, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0, attn_implementation=attn)
    return transformers.ViTModel(cfg), (torch.randn(2, 3, 16, 16),), 2


def resnet(attn: str = "eager") -> tuple[torch.nn.Module, tuple[Any, ...], int]:
    """ResNet with two stages on 17x17 images."""
    import transformers

    _quiet()
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_channels=3)
    return transformers.ResNetModel(cfg), (torch.randn(2, 3, 17, 17),), 0


MODELS: dict[str, Callable[..., tuple[torch.nn.Module, tuple[Any, ...], int]]] = {
    "gpt2": gpt2, "bert": bert, "llama": llama, "vit": vit, "resnet": resnet,
}


def main_output(out: Any) -> torch.Tensor:
    """The model's main tensor output (logits or last hidden state)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return out[0]


def more_models() -> dict[str, tuple[Callable[[], torch.nn.Module], tuple[Any, ...], int]]:
    """T5, Mistral (GQA), DistilBERT, BART and ConvNeXt: (make model, inputs, attention layers)."""
    import transformers as T

    T.logging.set_verbosity_error()
    ids = torch.randint(0, 99, (2, 9))
    return {
        "t5": (lambda: T.T5EncoderModel(T.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                                   num_heads=4, dropout_rate=0.0)), (ids,), 1),
        "mistral": (lambda: T.MistralModel(T.MistralConfig(vocab_size=99, hidden_size=32, intermediate_size=40,
                                                           num_hidden_layers=1, num_attention_heads=4,
                                                           num_key_value_heads=2)), (ids,), 1),
        "distilbert": (lambda: T.DistilBertModel(T.DistilBertConfig(vocab_size=99, dim=32, hidden_dim=37, n_layers=1,
                                                                    n_heads=2, dropout=0.0, attention_dropout=0.0)),
                       (ids,), 1),
        "bart": (lambda: T.BartModel(T.BartConfig(vocab_size=99, d_model=32, encoder_layers=1, decoder_layers=1,
                                                  encoder_attention_heads=2, decoder_attention_heads=2,
                                                  encoder_ffn_dim=37, decoder_ffn_dim=37, dropout=0.0,
                                                  max_position_embeddings=32)), (ids,), 3),
        "convnext": (lambda: T.ConvNextModel(T.ConvNextConfig(num_stages=2, num_channels=3, hidden_sizes=[8, 16],
                                                              depths=[1, 1], image_size=32)),
                     (torch.randn(2, 3, 32, 32),), 0),
    }

"""The chunked causal-LM cross-entropy gives PyTorch's numbers (loss and gradients)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

from llmkit.train import loss as chunked


@pytest.mark.parametrize("num_items", [None, 1000])
def test_chunked_cross_entropy_equals_torch(
    monkeypatch: pytest.MonkeyPatch, num_items: int | None
) -> None:
    monkeypatch.setattr(chunked, "CHUNK_BYTES", 7 * 500 * 4)  # 7-row chunks: 43 of them, last short
    torch.manual_seed(0)
    logits = (torch.randn(300, 500) * 4).requires_grad_()
    target = torch.randint(0, 500, (300,))
    target[::9] = -100
    mine = chunked.chunked_cross_entropy(logits, target, num_items)
    (g_mine,) = torch.autograd.grad(mine * 3.0, logits)  # a non-unit upstream gradient
    reduction = "mean" if num_items is None else "sum"
    ref = torch.nn.functional.cross_entropy(logits, target, reduction=reduction)
    ref = ref if num_items is None else ref / num_items
    (g_ref,) = torch.autograd.grad(ref * 3.0, logits)
    assert mine.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g_mine, g_ref, atol=1e-7)
    assert g_mine[::9].abs().max() == 0  # ignored targets get no gradient


def test_a_gpt_trains_on_the_same_loss_and_gradients_with_it() -> None:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=1000, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # same forward twice
    stock, swapped = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    swapped.load_state_dict(stock.state_dict())
    assert chunked.use_chunked_loss(swapped)
    ids = torch.randint(0, 1000, (4, 32))
    labels = ids.clone()
    labels[:, 0] = -100
    grads, losses = [], []
    for model in (stock, swapped):
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(model.transformer.wte.weight.grad)
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert torch.allclose(grads[1], grads[0], atol=1e-7)


def test_masked_lms_keep_their_own_loss() -> None:
    bert = BertForMaskedLM(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    )
    assert not chunked.use_chunked_loss(bert)

"""gpt25.model on a CUDA GPU: the same numbers as on the CPU (fp32), bf16 close to fp32 (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from gpt25.model import ModelConfig, TransformerLM
from gpt25.optim import cross_entropy

pytestmark = pytest.mark.cuda

CONFIG = ModelConfig(vocab_size=300, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=160)


def cpu_and_cuda_models() -> tuple[TransformerLM, TransformerLM]:
    torch.manual_seed(0)
    cpu = TransformerLM(CONFIG)
    cuda = TransformerLM(CONFIG, device="cuda")
    cuda.load_state_dict(cpu.state_dict())
    return cpu, cuda


def test_fp32_logits_and_gradients_on_cuda_equal_the_cpus() -> None:
    cpu, cuda = cpu_and_cuda_models()
    ids = torch.randint(0, CONFIG.vocab_size, (3, 49), generator=torch.Generator().manual_seed(1))
    for model, device in ((cpu, "cpu"), (cuda, "cuda")):
        cross_entropy(model(ids[:, :-1].to(device)), ids[:, 1:].to(device)).backward()
    torch.testing.assert_close(cuda(ids.cuda()).cpu(), cpu(ids), atol=1e-4, rtol=1e-4)
    for (name, on_cpu), on_cuda in zip(cpu.named_parameters(), cuda.parameters(), strict=True):
        torch.testing.assert_close(on_cuda.grad.cpu(), on_cpu.grad, atol=1e-4, rtol=1e-3, msg=name)


def test_bf16_autocast_and_bf16_weights_stay_close_to_fp32() -> None:
    _, cuda = cpu_and_cuda_models()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 64), device="cuda")
    with torch.no_grad():
        reference = cuda(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            autocast = cuda(ids).float()
        cuda.to(torch.bfloat16)
        bf16_weights = cuda(ids).float()
    assert cuda.rope.cos.dtype == torch.float32  # the tables are recomputed in fp32, not rounded
    scale = reference.abs().mean()
    for logits in (autocast, bf16_weights):
        assert (logits - reference).abs().mean() < 0.05 * scale
        assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9

"""`gpt25 checkpoint import`: the GPT 2.5 seed's DCP and Hugging Face folders and transformers Llama folders
become gpt25 checkpoint directories whose logits, step, AdamW moments and next update are the seed's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gpt25.checkpoint import load_model, load_training_state, read_meta
from gpt25.checkpoint_import import import_checkpoint
from gpt25.cli import main
from gpt25.model import ModelConfig, TransformerLM, parameter_groups
from gpt25.optim import AdamW, cross_entropy
from gpt25.tokenizer import Tokenizer

D_MODEL, D_FF, NUM_LAYERS, NUM_HEADS, CONTEXT = 32, 48, 2, 4, 16
BYTE_VOCAB = 257  # 256 bytes + <|endoftext|>: a stand-in for GPT-2's 50257
SEED_STEP = 7
LR, BETAS, EPSILON, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 1e-8, 0.1


def seed_weights(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the seed's names and shapes; norm gains away from 1 so a mixed-up norm shows."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"emb.weight": (vocab_size, D_MODEL), "norm.weight": (D_MODEL,), "linear.weight": (vocab_size, D_MODEL)}
    for index in range(NUM_LAYERS):
        block = f"tblocks.{index}"
        shapes |= {f"{block}.norm_att.weight": (D_MODEL,), f"{block}.norm_ff.weight": (D_MODEL,),
                   f"{block}.ffn.w1": (D_FF, D_MODEL), f"{block}.ffn.w3": (D_FF, D_MODEL),
                   f"{block}.ffn.w2": (D_MODEL, D_FF)}
        shapes |= {f"{block}.mhsa.{name}.weight": (D_MODEL, D_MODEL) for name in ("Wq", "Wk", "Wv", "Wo")}
    weights = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            weights[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            weights[name] = torch.randn(shape, generator=generator) * 0.2
    return weights


def seed_optimizer(weights: dict[str, torch.Tensor]) -> dict:
    """The seed's AdamW state, as get_state_dict gives it: t, m, v per name; `epsilon` in the group."""
    generator = torch.Generator().manual_seed(1)
    state = {name: {"t": SEED_STEP, "m": torch.randn(tensor.shape, generator=generator) * 1e-2,
                    # sqrt(v) >> eps: the seed adds eps to sqrt(v), gpt25 to its bias-corrected value
                    "v": (torch.rand(tensor.shape, generator=generator) + 1) * 1e-4} for name, tensor in weights.items()}
    group = {"lr": LR, "betas": BETAS, "epsilon": EPSILON, "weight_decay": WEIGHT_DECAY, "params": list(weights)}
    return {"state": state, "param_groups": [group]}


def save_seed_dcp(folder: Path, weights: dict, optimizer: dict, prefix: str = "") -> Path:
    import torch.distributed.checkpoint as dcp

    model = {prefix + name: tensor for name, tensor in weights.items()}
    optimizer = {"state": {prefix + name: values for name, values in optimizer["state"].items()},
                 "param_groups": optimizer["param_groups"]}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process is intended
        dcp.save({"app": {"model": model, "optimizer": optimizer, "iteration": SEED_STEP}}, checkpoint_id=folder,
                 no_dist=True)
    return folder


# ----- the seed's model and optimizer, written independently of gpt25 -----

def seed_rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    return x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5) * gain


def seed_rope(x: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """x (batch, heads, seq, head_dim) rotated on pairs (x[2i], x[2i+1])."""
    seq, head_dim = x.shape[-2:]
    frequencies = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (head_dim/2,)
    angles = torch.arange(seq, dtype=torch.float32)[:, None] * frequencies[None]  # (seq, head_dim/2)
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([even * angles.cos() - odd * angles.sin(), even * angles.sin() + odd * angles.cos()], -1)
    return rotated.flatten(-2)


def seed_forward(weights: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Logits (batch, seq, vocab) of the seed's model: pre-norm blocks, causal attention, SwiGLU."""
    batch, seq = ids.shape
    x = weights["emb.weight"][ids]  # (batch, seq, d)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()

    def heads(tensor: torch.Tensor) -> torch.Tensor:  # (batch, seq, d) -> (batch, heads, seq, head_dim)
        return tensor.view(batch, seq, NUM_HEADS, -1).transpose(1, 2)

    for index in range(NUM_LAYERS):
        block = {name.removeprefix(f"tblocks.{index}."): tensor for name, tensor in weights.items()
                 if name.startswith(f"tblocks.{index}.")}
        h = seed_rms_norm(x, block["norm_att.weight"])
        q, k, v = (heads(h @ block[f"mhsa.{name}.weight"].T) for name in ("Wq", "Wk", "Wv"))
        q, k = seed_rope(q), seed_rope(k)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~causal, float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, seq, D_MODEL)
        x = x + attended @ block["mhsa.Wo.weight"].T
        h = seed_rms_norm(x, block["norm_ff.weight"])
        gate = h @ block["ffn.w1"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ block["ffn.w3"].T)) @ block["ffn.w2"].T
    return seed_rms_norm(x, weights["norm.weight"]) @ weights["linear.weight"].T


def seed_adamw_step(weights: dict, optimizer: dict, grads: dict) -> dict[str, torch.Tensor]:
    """The seed's update: bias-corrected step size, eps on sqrt(v), then decay of every parameter."""
    (beta1, beta2), new = BETAS, {}
    for name, parameter in weights.items():
        state = optimizer["state"][name]
        step = state["t"] + 1
        m = beta1 * state["m"] + (1 - beta1) * grads[name]
        v = beta2 * state["v"] + (1 - beta2) * grads[name] ** 2
        step_size = LR * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        updated = parameter - step_size * m / (v.sqrt() + EPSILON)
        new[name] = updated - LR * WEIGHT_DECAY * updated
    return new


# ----- fixtures -----

@pytest.fixture(scope="module")
def gpt2_like_tokenizer(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer") / "bytes"
    Tokenizer({index: bytes([index]) for index in range(256)}, [], ["<|endoftext|>"]).save(folder)
    return folder


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> dict:
    weights = seed_weights(BYTE_VOCAB)
    optimizer = seed_optimizer(weights)
    folder = save_seed_dcp(tmp_path_factory.mktemp("seed") / "final_checkpoint", weights, optimizer, "_orig_mod.")
    return {"weights": weights, "optimizer": optimizer, "dcp": folder}


@pytest.fixture(scope="module")
def imported(seed, gpt2_like_tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "seed"
    import_checkpoint(seed["dcp"], out, tokenizer_dir=gpt2_like_tokenizer, settings={"num_heads": NUM_HEADS,
                                                                                     "context_length": CONTEXT})
    return out


def ids(vocab_size: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, CONTEXT), generator=torch.Generator().manual_seed(2))


def run_cli(*argv: object) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    return exit_info.value.code


# ----- the seed's DCP folder -----

def test_dcp_import_gives_the_seed_logits_step_and_tokenizer(seed, imported) -> None:
    model, meta = load_model(imported)
    assert meta["step"] == SEED_STEP and meta["imported_from"]["layout"] == "seed-dcp"
    assert model.config == ModelConfig(vocab_size=BYTE_VOCAB, context_length=CONTEXT, d_model=D_MODEL,
                                       num_layers=NUM_LAYERS, num_heads=NUM_HEADS, d_ff=D_FF, rope_theta=10000.0)
    batch = ids(BYTE_VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), seed_forward(seed["weights"], batch), atol=1e-4, rtol=1e-4)
    tokenizer = Tokenizer.load(imported / "tokenizer")
    assert tokenizer.vocab_size == BYTE_VOCAB and meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert meta["train_config"] == {"lr": LR, "beta1": 0.9, "beta2": 0.95, "eps": EPSILON,
                                    "weight_decay": WEIGHT_DECAY, "decay_all": True}


def test_moments_survive_and_the_next_step_is_the_seeds(seed, imported) -> None:
    model = TransformerLM(load_model(imported)[0].config)
    optimizer = AdamW(parameter_groups(model, WEIGHT_DECAY, decay_all=True), lr=LR, betas=BETAS, eps=1.0,
                      weight_decay=0.5)  # eps and weight decay come from the checkpoint's group
    assert load_training_state(imported, model, optimizer)["step"] == SEED_STEP
    assert optimizer.param_groups[0]["eps"] == EPSILON and optimizer.param_groups[0]["weight_decay"] == WEIGHT_DECAY
    emb_state = optimizer.state[model.token_embeddings.weight]
    assert emb_state["step"] == SEED_STEP
    assert torch.equal(emb_state["exp_avg"], seed["optimizer"]["state"]["emb.weight"]["m"])
    assert torch.equal(optimizer.state[model.layers[1].ffn.w2.weight]["exp_avg_sq"],
                       seed["optimizer"]["state"]["tblocks.1.ffn.w2"]["v"])

    batch = ids(BYTE_VOCAB)
    cross_entropy(model(batch[:, :-1]), batch[:, 1:]).backward()
    optimizer.step()
    seed_parameters = {name: tensor.clone().requires_grad_() for name, tensor in seed["weights"].items()}
    logits = seed_forward(seed_parameters, batch[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, BYTE_VOCAB), batch[:, 1:].reshape(-1)).backward()
    expected = seed_adamw_step(seed["weights"], seed["optimizer"],
                               {name: tensor.grad for name, tensor in seed_parameters.items()})
    # gpt25 decays before the Adam update and the seed after it: they differ by lr * wd * update (~1e-7 here)
    torch.testing.assert_close(model.token_embeddings.weight.detach(), expected["emb.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.layers[0].ln1.weight.detach(), expected["tblocks.0.norm_att.weight"],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(model.layers[1].attn.q_proj.weight.detach(), expected["tblocks.1.mhsa.Wq.weight"],
                               atol=1e-6, rtol=0)
    assert optimizer.state[model.lm_head.weight]["step"] == SEED_STEP + 1


def test_checkpoint_info_shows_step_config_tokenizer_and_origin(imported, seed, capsys) -> None:
    assert run_cli("checkpoint", "info", imported) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["step"] == SEED_STEP and info["model_config"]["d_ff"] == D_FF
    assert info["tokenizer"] == str(imported / "tokenizer")
    assert info["imported_from"] == {"layout": "seed-dcp", "source": str(seed["dcp"].resolve())}


# ----- the seed's Hugging Face folder -----

def write_seed_hf(folder: Path, weights: dict, tie: bool = False) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    config = {"model_type": "gpt2.5", "vocab_size": BYTE_VOCAB + 3, "d_model": D_MODEL, "num_layers": NUM_LAYERS,
              "num_heads": NUM_HEADS, "d_ff": D_FF, "theta": 10000.0, "context_length": CONTEXT,
              "hidden_size": D_MODEL, "tie_word_embeddings": tie}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({f"model.{name}": tensor for name, tensor in weights.items()
               if not (tie and name == "linear.weight")}, folder / "model.safetensors")
    return folder


def test_hf_folder_import_adds_the_chat_tokens_and_ties_when_asked(gpt2_like_tokenizer, tmp_path) -> None:
    weights = seed_weights(BYTE_VOCAB + 3, seed=3)
    source = write_seed_hf(tmp_path / "mygpt", weights, tie=True)
    out, layout, meta = import_checkpoint(source, tmp_path / "chat", tokenizer_dir=gpt2_like_tokenizer)
    assert layout.name == "seed-hf" and meta["step"] == 0
    model, _ = load_model(out)
    assert torch.equal(model.lm_head.weight, weights["emb.weight"])
    tied = weights | {"linear.weight": weights["emb.weight"]}
    batch = ids(BYTE_VOCAB + 3)
    with torch.no_grad():
        torch.testing.assert_close(model(batch), seed_forward(tied, batch), atol=1e-4, rtol=1e-4)
    tokenizer = Tokenizer.load(out / "tokenizer")
    assert [tokenizer.token_id(token) for token in ("<|user|>", "<|assistant|>", "<|system|>")] == [257, 258, 259]


def test_hf_folder_with_its_own_gpt2_style_tokenizer(gpt2_like_tokenizer, tmp_path) -> None:
    source = write_seed_hf(tmp_path / "mygpt", seed_weights(BYTE_VOCAB + 3))
    for name in ("vocab.json", "merges.txt"):
        (source / name).write_bytes((gpt2_like_tokenizer / name).read_bytes())
    out, _, meta = import_checkpoint(source, tmp_path / "chat")
    tokenizer = Tokenizer.load(out / "tokenizer")
    assert tokenizer.vocab_size == BYTE_VOCAB + 3 and meta["tokenizer_fingerprint"] == tokenizer.fingerprint()
    assert tokenizer.encode("hi<|endoftext|>") == [104, 105, 256]


# ----- a transformers Llama folder (what `gpt25 export hf` writes) -----

def test_llama_folder_round_trips_through_export(imported, gpt2_like_tokenizer, tmp_path) -> None:
    assert run_cli("export", "hf", "--checkpoint", imported, "--tokenizer", imported / "tokenizer",
                   "--out", tmp_path / "hf") == 0
    assert run_cli("checkpoint", "import", tmp_path / "hf", "--out", tmp_path / "back") == 0  # its tokenizer.json
    original, back = load_model(imported)[0], load_model(tmp_path / "back")[0]
    assert Tokenizer.load(tmp_path / "back" / "tokenizer").fingerprint() == Tokenizer.load(gpt2_like_tokenizer).fingerprint()
    assert back.config == original.config and read_meta(tmp_path / "back")["imported_from"]["layout"] == "llama-hf"
    assert all(torch.equal(tensor, original.state_dict()[name]) for name, tensor in back.state_dict().items())


# ----- every command takes the imported directory -----

@pytest.fixture(scope="module")
def prepared_data(gpt2_like_tokenizer, tmp_path_factory) -> Path:
    from gpt25.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    text = "The cat sat on the mat. The dog ran far away from home, and then it came back again."
    (root / "corpus.txt").write_text("\n\n".join(f"{text} Document {index}." for index in range(40)))
    prepare(PrepareConfig(sources=[str(root / "corpus.txt")], tokenizer_dir=str(gpt2_like_tokenizer),
                          out_dir=str(root / "data"), val_docs=4, workers=1, progress=False))
    return root / "data"


def test_eval_generate_and_train_take_the_imported_dir(imported, prepared_data, tmp_path, capsys) -> None:
    tokenizer = imported / "tokenizer"
    assert run_cli("eval", "--checkpoint", imported, "--tokenizer", tokenizer, "--data", prepared_data,
                   "--device", "cpu", "--out", tmp_path / "eval.json") == 0
    assert json.loads((tmp_path / "eval.json").read_text())["step"] == SEED_STEP
    assert run_cli("generate", "--checkpoint", imported, "--tokenizer", tokenizer, "--prompt", "The cat",
                   "--max_new_tokens", 4, "--seed", 0, "--device", "cpu") == 0
    assert run_cli(*train_argv(imported, prepared_data, tmp_path / "run", 2)) == 0
    assert read_meta(tmp_path / "run")["step"] == SEED_STEP + 2
    assert "resumed from" in capsys.readouterr().out


def train_argv(imported: Path, data: Path, out: Path, batch_size: int) -> list[str]:
    return ["train", "--checkpoint", str(imported), "--data", str(data), "--tokenizer", str(imported / "tokenizer"),
            "--out", str(out), "--decay_all", "--d_model", str(D_MODEL), "--num_layers", str(NUM_LAYERS),
            "--num_heads", str(NUM_HEADS), "--d_ff", str(D_FF), "--context_length", str(CONTEXT),
            "--batch_size", str(batch_size), "--train_steps", str(SEED_STEP + 2), "--warmup_steps", "0",
            "--eval_every", "0", "--eval_steps", "1", "--device", "cpu"]


@pytest.mark.slow  # two torchrun ranks: ~40 s on a busy 2-core machine
def test_fsdp_ranks_continue_the_import_as_one_process_does(imported, prepared_data, tmp_path) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}
    for command in ([sys.executable, "-m", "gpt25", *train_argv(imported, prepared_data, tmp_path / "one", 4)],
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                     "gpt25", *train_argv(imported, prepared_data, tmp_path / "fsdp", 2)]):
        finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
        assert finished.returncode == 0, finished.stderr[-2000:]
    one, fsdp = load_model(tmp_path / "one")[0].state_dict(), load_model(tmp_path / "fsdp")[0].state_dict()
    assert read_meta(tmp_path / "fsdp")["step"] == SEED_STEP + 2 and read_meta(tmp_path / "fsdp")["sharded"]
    for name, tensor in one.items():
        torch.testing.assert_close(fsdp[name], tensor, atol=1e-6, rtol=1e-5)


def test_train_without_decay_all_keeps_the_moments_under_gpt25s_grouping(imported, prepared_data, tmp_path) -> None:
    model = load_model(imported)[0]
    optimizer = AdamW(parameter_groups(model, 0.1), lr=LR, betas=BETAS, eps=1e-8, weight_decay=0.1)
    load_training_state(imported, model, optimizer)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.1, 0.0]
    assert optimizer.state[model.ln_final.weight]["step"] == SEED_STEP


# ----- bad input: one line, exit 2, nothing left behind -----

def assert_refused(capsys, tmp_path: Path, *argv: object, match: str, before: set[str]) -> None:
    assert run_cli("checkpoint", "import", *argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and match in error, error
    assert {path.name for path in tmp_path.iterdir()} == before


def test_unknown_layout_lists_the_known_ones(tmp_path, capsys) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert_refused(capsys, tmp_path, tmp_path / "junk", "--out", tmp_path / "out",
                   match="cannot tell what", before={"junk"})


def test_a_config_json_that_is_not_json_is_named(tmp_path, capsys) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama",')
    assert_refused(capsys, tmp_path, tmp_path / "broken", "--out", tmp_path / "out",
                   match=f"{tmp_path / 'broken' / 'config.json'} is not valid JSON", before={"broken"})


def test_unknown_layout_message_names_every_layout(tmp_path) -> None:
    from gpt25.checkpoint_import import LAYOUTS

    with pytest.raises(ValueError, match="known layouts are") as error:
        import_checkpoint(tmp_path, tmp_path / "out")
    assert all(layout.name in str(error.value) for layout in LAYOUTS)
    assert [layout.name for layout in LAYOUTS] == ["seed-dcp", "seed-hf", "llama-hf", "gpt2-hf"]


@pytest.mark.parametrize(("change", "message"), [
    ("missing", "has no tensor tblocks.1.ffn.w2 (expected shape (32, 48))"),
    ("misshapen", "tensor tblocks.0.mhsa.Wk.weight has shape (32, 16), expected (32, 32)"),
    ("moment", "optimizer m of tblocks.0.norm_ff.weight has shape (3,), expected (32,)"),
    ("head", "has no tensor linear.weight (expected shape (257, 32))"),  # the seed's DCP head is never tied
])
def test_a_bad_dcp_tensor_is_named(seed, tmp_path, capsys, change, message) -> None:
    weights, optimizer = dict(seed["weights"]), seed_optimizer(seed["weights"])
    if change == "missing":
        del weights["tblocks.1.ffn.w2"]
    elif change == "head":
        del weights["linear.weight"]
    elif change == "misshapen":
        weights["tblocks.0.mhsa.Wk.weight"] = torch.zeros(D_MODEL, 16)
    else:
        optimizer["state"]["tblocks.0.norm_ff.weight"]["m"] = torch.zeros(3)
    save_seed_dcp(tmp_path / "bad", weights, optimizer)
    assert_refused(capsys, tmp_path, tmp_path / "bad", "--out", tmp_path / "out", "--num_heads", NUM_HEADS,
                   match=message, before={"bad"})


def test_a_tokenizer_larger_than_the_model_is_refused(seed, tmp_path, capsys) -> None:
    Tokenizer({index: bytes([index]) for index in range(256)}, [],
              ["<|endoftext|>", "<|a|>", "<|b|>"]).save(tmp_path / "big")
    assert_refused(capsys, tmp_path, seed["dcp"], "--tokenizer", tmp_path / "big", "--out", tmp_path / "out",
                   "--num_heads", NUM_HEADS, match="tokenizer has 259 tokens but the model's vocab_size is 257",
                   before={"big"})


def test_an_existing_out_needs_force(seed, imported, tmp_path, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert_refused(capsys, tmp_path, seed["dcp"], "--out", tmp_path / "out", "--num_heads", NUM_HEADS,
                   match="exists; choose another --out or pass --force", before={"out"})
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert run_cli("checkpoint", "import", seed["dcp"], "--out", tmp_path / "out", "--num_heads", NUM_HEADS,
                   "--force") == 0
    assert read_meta(tmp_path / "out")["step"] == SEED_STEP and not (tmp_path / "out" / "tokenizer").exists()

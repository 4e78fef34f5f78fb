"""TrainConfig and the `gpt25 train` flags: names, TOML + flag precedence, the shipped configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gpt25.cli import build_parser, main
from gpt25.train.config import TrainConfig, read_toml_settings, resolve_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPE_FLAGS = ["batch_size", "grad_accum_steps", "context_length", "num_layers", "d_model", "num_heads", "d_ff",
                "rope_theta", "train_steps", "lr", "beta1", "beta2", "eps", "weight_decay", "checkpoint"]
OTHER_FLAGS = ["data", "tokenizer", "out", "min_lr", "warmup_steps", "max_grad_norm", "eval_every", "eval_steps",
               "save_every", "keep_checkpoints", "seed", "dtype", "compile", "device", "tracker", "parallel",
               "hellaswag", "hellaswag_limit", "decay_all"]


def parse(*argv: str) -> TrainConfig:
    return resolve_config(build_parser().parse_args(["train", *argv]))


def test_every_flag_of_the_recipe_exists_with_help() -> None:
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {action.dest: action for action in train_parser._actions}
    for name in RECIPE_FLAGS + OTHER_FLAGS + ["config"]:
        assert name in options, name
        assert options[name].help, name
    assert {field.name for field in dataclasses.fields(TrainConfig)} <= set(options)


def test_flags_override_toml_which_overrides_defaults(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text('d_model = 48\nlr = 2\nnum_heads = 4\ndtype = "bfloat16"\n')
    config = parse("--config", str(toml), "--d_model", "64", "--batch_size", "3", "--compile")
    assert config.d_model == 64  # flag beats file
    assert config.lr == 2.0 and isinstance(config.lr, float)  # file beats default, int coerced
    assert config.dtype == "bfloat16" and config.num_heads == 4
    assert config.batch_size == 3 and config.compile == "on"
    assert config.weight_decay == TrainConfig().weight_decay  # untouched default
    assert config.resolved_min_lr == pytest.approx(0.2)


def test_decay_all_is_a_switch_in_flags_and_toml(tmp_path: Path) -> None:
    assert parse().decay_all is False and parse("--decay_all").decay_all is True
    toml = tmp_path / "run.toml"
    toml.write_text("decay_all = true\n")
    assert parse("--config", str(toml)).decay_all is True
    toml.write_text("decay_all = 1\n")
    with pytest.raises(ValueError, match="decay_all must be a bool"):
        parse("--config", str(toml))


def test_train_table_and_errors(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("[train]\ntrain_steps = 7\nwarmup_steps = 1\n")
    assert parse("--config", str(toml)).train_steps == 7
    toml.write_text("learning_rate = 1.0\n")
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        parse("--config", str(toml))
    toml.write_text('d_model = "wide"\n')
    with pytest.raises(ValueError, match="d_model must be a int"):
        parse("--config", str(toml))
    with pytest.raises(ValueError, match="divisible"):
        parse("--d_model", "30", "--num_heads", "4")
    with pytest.raises(FileNotFoundError):
        parse("--config", str(tmp_path / "missing.toml"))
    with pytest.raises(SystemExit):
        parse("--tracker", "mlflow")


def test_recipe_config_holds_the_recipe() -> None:
    config = TrainConfig(**read_toml_settings(CONFIGS / "gpt25-124m.toml"))
    tokens_per_rank = config.batch_size * config.grad_accum_steps * config.context_length
    assert (config.batch_size, config.grad_accum_steps, tokens_per_rank) == (32, 2, 65_536)
    assert tokens_per_rank * 8 == tokens_per_rank * 4 * 2 == 524_288  # 8 ranks, or 4 GPUs with grad_accum_steps 4
    assert (config.train_steps, config.lr, config.weight_decay, config.beta1, config.beta2, config.eps) == (
        80_000, 18e-4, 0.1, 0.9, 0.95, 1e-8)
    shape = (config.rope_theta, config.d_model, config.num_layers, config.num_heads, config.d_ff)
    assert shape == (10000.0, 768, 12, 12, 2048)


def test_recipe_compiles_on_cuda_only() -> None:
    config = TrainConfig(**read_toml_settings(CONFIGS / "gpt25-124m.toml"))
    assert config.compile == "auto"
    assert config.compiles_on("cuda") and not config.compiles_on("cpu")
    assert not parse("--config", str(CONFIGS / "gpt25-124m.toml"), "--compile", "off").compiles_on("cuda")


@pytest.mark.parametrize(("flags", "setting", "on_cuda", "on_cpu"), [
    ([], "off", False, False),
    (["--compile"], "on", True, True),
    (["--compile", "on"], "on", True, True),
    (["--compile", "auto"], "auto", True, False),
    (["--compile", "off"], "off", False, False),
])
def test_compile_flags_and_where_they_compile(flags: list[str], setting: str, on_cuda: bool, on_cpu: bool) -> None:
    config = parse(*flags)
    assert (config.compile, config.compiles_on("cuda"), config.compiles_on("cpu")) == (setting, on_cuda, on_cpu)


def test_compile_in_toml_takes_a_setting_or_a_boolean(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    for text, setting in (('"auto"', "auto"), ("true", "on"), ("false", "off")):
        toml.write_text(f"compile = {text}\n")
        assert parse("--config", str(toml)).compile == setting
    toml.write_text('compile = "yes"\n')
    with pytest.raises(ValueError, match="^compile must be one of auto, on, off, got 'yes'$"):
        parse("--config", str(toml))


def test_the_old_theta_name_still_sets_rope_theta(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("theta = 500\n")
    assert parse("--config", str(toml)).rope_theta == 500.0
    assert parse("--theta", "300").rope_theta == parse("--rope_theta", "300").rope_theta == 300.0
    toml.write_text("theta = 500\nrope_theta = 600\n")
    with pytest.raises(ValueError, match=f"^{toml}: theta is the old name of rope_theta; give only rope_theta$"):
        parse("--config", str(toml))


def test_cpu_config_parses() -> None:
    config = TrainConfig(**read_toml_settings(CONFIGS / "cpu-small.toml"))
    assert config.device == "cpu" and config.d_model == 256 and config.context_length == 256


def test_a_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "broken.toml"
    toml.write_text("train_steps = 7 8\n")
    with pytest.raises(ValueError, match=rf"^{toml} is not valid TOML: Expected newline or end of document .*"
                       r"\(at line 1, column 17\)$"):
        parse("--config", str(toml))


@pytest.mark.parametrize(("flags", "message"), [
    (["--rope_theta", "0"], "--rope_theta must be positive, got 0.0"),
    (["--theta", "0"], "--rope_theta must be positive, got 0.0"),
    (["--lr", "-1"], "--lr must be >= 0, got -1.0"),
    (["--lr", "nan"], "--lr must be >= 0, got nan"),
    (["--weight_decay", "-0.1"], "--weight_decay must be >= 0, got -0.1"),
    (["--beta2", "1"], r"--beta2 must be in \[0, 1\), got 1.0"),
])
def test_out_of_range_settings_name_their_flag(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse(*flags)


def cli_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    """The one line `gpt25 train ...` prints for a user error (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_a_bad_device_or_a_file_as_out_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_error(capsys, "--data", str(tmp_path), "--device", "foo") == (
        "gpt25 train: error: --device 'foo' is not a device; use cpu, cuda, cuda:N or auto\n")
    assert cli_error(capsys, "--data", str(tmp_path), "--device", "meta").startswith(
        "gpt25 train: error: --device 'meta' is not a device")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli_error(capsys, "--data", str(tmp_path), "--device", "cpu", "--out", str(afile)) == (
        f"gpt25 train: error: --out {afile} is a file; give a directory for the run\n")


def test_help_shows_no_empty_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(required)" in text and "(default: '')" not in text
    assert "(default: DATA/tokenizer when it exists)" in text and "(default: 1000)" in text


def test_arch_presets_fill_the_components_and_single_flags_override_them() -> None:
    from gpt25.model import ARCHITECTURES
    from gpt25.model.config import COMPONENT_CHOICES
    from gpt25.train.config import CHOICES

    assert CHOICES["arch"] == tuple(ARCHITECTURES)
    assert all(CHOICES[name] == allowed for name, allowed in COMPONENT_CHOICES.items())
    recipe = parse()
    assert (recipe.arch, recipe.norm, recipe.bias, recipe.d_ff) == ("gpt25", "rmsnorm", "off", 704)
    assert recipe.model_config(100).components() == ARCHITECTURES["gpt25"]
    gpt2 = parse("--arch", "gpt2")
    assert gpt2.d_ff == 4 * gpt2.d_model
    assert gpt2.model_config(100).components() == ARCHITECTURES["gpt2"]
    mixed = parse("--arch", "gpt2", "--norm", "rmsnorm", "--tie-embeddings", "off", "--d_ff", "96")
    assert mixed.model_config(100).components() == ARCHITECTURES["gpt2"] | {"norm": "rmsnorm", "tie_embeddings": False}
    assert mixed.d_ff == 96
    with pytest.raises(SystemExit):
        parse("--positions", "alibi")

import os

import pytest
import yaml

from dcgan import layout
from dcgan.cli import main
from dcgan.config import TrainConfig, load_config, save_config
from dcgan.errors import ConfigError


def test_defaults_are_the_seeds():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.g_lr, cfg.d_lr, cfg.beta1, cfg.beta2) == (
        30, 64, 2e-4, 2e-4, 0.5, 0.999)
    assert (cfg.latent_dim, cfg.label_smoothing, cfg.dropout) == (100, 0.1, 0.3)
    assert (cfg.g_width, cfg.spectral_norm) == (1, False)  # the seed's networks
    assert (cfg.sample_every, cfg.checkpoint_every, cfg.checkpoint_every_steps) == (100, 10, 0)
    assert (cfg.device, cfg.train_subset, cfg.max_steps, cfg.precision) == ("auto", 0, 0, "fp32")


def test_exactly_the_documented_keys():
    assert list(TrainConfig().to_dict()) == [
        "epochs", "batch_size", "g_lr", "d_lr", "beta1", "beta2", "loss", "gp_weight",
        "critic_steps", "latent_dim",
        "label_smoothing", "label_smoothing_mode", "dropout", "g_width", "spectral_norm",
        "sample_every", "checkpoint_every",
        "checkpoint_every_steps", "log_every", "seed", "device", "data_dir", "train_subset",
        "max_steps", "precision", "channels_last", "compile", "ema_decay", "eval_every",
        "eval_samples", "rescore_top", "rescore_samples", "lr_decay", "lr_decay_final",
        "auto_balance", "balance_every", "balance_floor", "augment", "augment_p",
        "augment_target", "augment_every", "augment_speed", "augment_shift", "augment_cutout",
        "sync_batchnorm", "max_failures"]


def test_schedules_refuse_what_they_cannot_do(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("auto_balance: true\nlr_decay: 0.3\n")
    assert load_config(path).auto_balance is True  # a YAML boolean
    assert load_config(overrides=["auto_balance=False"]).auto_balance is False
    with pytest.raises(ConfigError, match="wgan-gp's critic has none"):
        load_config(overrides=["auto_balance=true", "loss=wgan-gp"])
    with pytest.raises(ConfigError, match="must be off with lr_decay or auto_balance"):
        load_config(path, ["compile=default"])


def test_data_dir_env_replaces_only_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("DCGAN_DATA_DIR", "/somewhere")
    assert TrainConfig().data_dir == "/somewhere"
    assert load_config(overrides=["data_dir=/explicit"]).data_dir == "/explicit"
    monkeypatch.delenv("DCGAN_DATA_DIR")
    assert TrainConfig().data_dir == "./data"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\ng_lr: 1.0e-3\ndevice: cpu\n")
    cfg = load_config(path, ["epochs=7", "d_lr=1e-4", "precision=bf16"])
    assert (cfg.epochs, cfg.g_lr, cfg.d_lr, cfg.device, cfg.precision) == (
        7, 1e-3, 1e-4, "cpu", "bf16")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["epochs=3", "dropout=0.25"])
    save_config(cfg, tmp_path / layout.CONFIG_FILE)
    assert load_config(tmp_path / layout.CONFIG_FILE) == cfg
    assert yaml.safe_load((tmp_path / layout.CONFIG_FILE).read_text())["epochs"] == 3


@pytest.mark.parametrize("override, key, rule", [
    ("g_lr=0", "g_lr", "> 0"),
    ("d_lr=-1e-4", "d_lr", "> 0"),
    ("g_lr=nan", "g_lr", "finite"),
    ("dropout=1", "dropout", "[0, 1)"),
    ("dropout=-0.1", "dropout", "[0, 1)"),
    ("label_smoothing=0.5", "label_smoothing", "[0, 0.5)"),
    ("label_smoothing=-0.01", "label_smoothing", "[0, 0.5)"),
    ("batch_size=0", "batch_size", ">= 1"),
    ("epochs=0", "epochs", ">= 1"),
    ("latent_dim=0", "latent_dim", ">= 1"),
    ("log_every=0", "log_every", ">= 1"),
    ("beta1=1", "beta1", "[0, 1)"),
    ("beta2=-0.5", "beta2", "[0, 1)"),
    ("sample_every=-1", "sample_every", ">= 0"),
    ("checkpoint_every=-1", "checkpoint_every", ">= 0"),
    ("checkpoint_every_steps=-5", "checkpoint_every_steps", ">= 0"),
    ("train_subset=-1", "train_subset", ">= 0"),
    ("max_steps=-1", "max_steps", ">= 0"),
    ("seed=-1", "seed", ">= 0"),
    ("device=tpu", "device", "auto, cpu, cuda, cuda:N"),
    ("device=cuda:x", "device", "auto, cpu, cuda, cuda:N"),
    ("precision=fp8", "precision", "fp32, bf16, fp16"),
    ("data_dir=", "data_dir", "empty"),
    ("eval_every=-1", "eval_every", ">= 0"),
    ("eval_samples=128", "eval_samples", ">= 129"),
    ("sync_batchnorm=maybe", "sync_batchnorm", "auto, true, false"),
    ("max_failures=-1", "max_failures", ">= 0"),
    ("rescore_top=-1", "rescore_top", ">= 0"),
    ("rescore_samples=100", "rescore_samples", "129-100000"),
    ("lr_decay=1.5", "lr_decay", "[0, 1]"),
    ("lr_decay_final=-0.1", "lr_decay_final", "[0, 1]"),
    ("auto_balance=1", "auto_balance", "true or false"),
    ("balance_every=0", "balance_every", ">= 1"),
    ("balance_floor=0", "balance_floor", "(0, 1]"),
    ("epochs=2.5", "epochs", "integer"),
    ("batch_size=lots", "batch_size", "integer"),
    ("g_lr=fast", "g_lr", "number"),
    ("colour=red", "colour", "unknown key"),
    ("epochs", "epochs", "key=value"),
])
def test_each_rule_names_key_and_rule(override, key, rule):
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert info.value.key == key
    assert rule in str(info.value)


@pytest.mark.parametrize("text, needle", [
    ("epochs: [1, 2]\n", "epochs"),
    ("batch_size: true\n", "batch_size"),
    ("unknown_key: 1\n", "unknown_key"),
    ("- just\n- a list\n", "mapping"),
    ("epochs: [unclosed\n", "not valid YAML"),
])
def test_bad_yaml_files(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("args", [
    ["--set", "g_lr=-1"],
    ["--set", "no_such_key=1"],
    ["--set", "dropout=1.5"],
    ["--config", "/nonexistent/config.yaml"],
])
def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys, args):
    code = main(["train", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: config: ")
    assert not (tmp_path / "run").exists()  # nothing written for a bad config


def test_fp16_needs_a_gpu(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "r"), "--set", "device=cpu",
                 "--set", "precision=fp16"])
    assert code == 2
    assert "precision" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("channels_last: false\n", "false"),
                                            ("channels_last: true\n", "true"),
                                            ("channels_last: 'false'\n", "false"),
                                            ("channels_last: auto\n", "auto"),
                                            ("channels_last: False\n", "false")])
def test_tristate_keys_take_what_yaml_writes(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text + text.replace("channels_last", "sync_batchnorm"))
    cfg = load_config(path)
    assert cfg.channels_last == expected and cfg.sync_batchnorm == expected
    assert load_config(overrides=[f"channels_last={expected}"]).channels_last == expected


@pytest.mark.parametrize("bad", ["channels_last: 1\n", "channels_last: maybe\n",
                                 "sync_batchnorm: null\n"])
def test_tristate_keys_refuse_other_values(tmp_path, bad):
    path = tmp_path / "c.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match="must be one of auto, true, false"):
        load_config(path)


def test_dcgan_config_prints_yaml_that_reads_back(tmp_path):
    """``dcgan config`` = defaults < --config < --set, as YAML --config reads back."""
    from .conftest import run_cli

    base = tmp_path / "base.yaml"
    base.write_text("epochs: 3\nloss: wgan-gp\nchannels_last: false\n")
    proc = run_cli(["config", "--config", str(base), "--set", "g_lr=3e-4"])
    assert proc.returncode == 0, proc.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(proc.stdout)
    expected = load_config(base, ["g_lr=3e-4"])
    assert load_config(printed) == expected
    assert (expected.epochs, expected.g_lr, expected.beta1, expected.channels_last) == (
        3, 3e-4, 0.0, "false")
    bad = run_cli(["config", "--set", "nope=1"])
    assert bad.returncode == 2 and "unknown key" in bad.stderr


def test_dcgan_version():
    from importlib.metadata import version

    from .conftest import run_cli

    proc = run_cli(["--version"])
    assert proc.returncode == 0 and proc.stdout.strip() == f"dcgan {version('dcgan')}"


# -- config files and values from outside: bounded, quoted, refused before anything is written

def _config_files(tmp_path):
    """Files that are not configs, each as a user (or an attacker) could hand one over."""
    files = {
        "not text": (b"\xff\xfe\x00e\x00p\x00o\x00c\x00h\x00s", "is not UTF-8 text"),
        "nul bytes": (b"epochs: 1\n\x00\x00", "is not text"),
        "many megabytes": (b"# " + b"x" * (3 << 20) + b"\n", "is larger than 1024 KiB"),
        "deep nesting": (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests deeper than"),
        "alias expansion": (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a]\n"
                            b"c: &c [*b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c]\n",
                            "uses a YAML alias at line 2"),
        "a huge number": (b"epochs: " + b"9" * 5000 + b"\n", "a value YAML cannot read"),
    }
    for name, (data, needle) in files.items():
        path = tmp_path / (name.replace(" ", "-") + ".yaml")
        path.write_bytes(data)
        yield name, str(path), needle
    yield "a directory", str(tmp_path), "is a directory"
    yield "an endless device", "/dev/zero", "is not a regular file"
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    yield "a pipe nobody writes to", str(fifo), "is not a regular file"


def test_config_files_that_are_not_configs_are_refused_in_one_line(tmp_path, capsys):
    for name, path, needle in _config_files(tmp_path):
        run = tmp_path / "run"
        code = main(["train", "--out", str(run), "--config", path])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, name
        assert len(err) == 1 and err[0].startswith("error: config: --config: "), (name, err)
        assert needle in err[0], (name, err[0])
        assert not run.exists(), name


@pytest.mark.parametrize("override, needle", [
    ("g_lr\nerror: forged=1", "'g_lr\\nerror: forged'"),  # the newline stays escaped
    ("g_lr=1e-4\x1b[2Jcleared", "'1e-4\\x1b[2Jcleared'"),
    ("seed=" + "9" * 30, "must be <= 2147483647"),
    ("seed=" + "9" * 5000, "must be an integer (got '9999"),
    ("batch_size=1000000", "must be <= 65536"),
    ("rescore_top=100000", "must be <= 100"),
])
def test_values_from_outside_stay_on_one_line_and_in_range(tmp_path, capsys, override, needle):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--set", override])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: config: "), err
    assert needle in err[0] and len(err[0]) < 800, err[0]  # no 5,000-digit echo
    assert not run.exists()  # refused before the run directory, its config or its lock


@pytest.mark.parametrize("args, needle", [
    (["sample", "--generator", "g.pth", "--image", "x.png", "--noise-seed", "9" * 30],
     "must be in 0-2147483647"),
    (["train", "--out", ""], "must name a directory"),
    (["analyze", "--out", " "], "must name a directory"),
])
def test_flags_from_outside_are_refused_in_one_line(capsys, args, needle):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and needle in err[0], err


def test_the_smoke_configuration_is_the_recommended_one_made_short():
    """make smoke shows what the recommended settings draw in 900 steps: its optimiser, loss
    and discriminator settings are the recommended configuration's."""
    from .conftest import ROOT as root

    smoke = load_config(root / "configs" / "smoke.yaml")
    recommended = load_config(root / "configs" / "recommended.yaml")
    for key in ("batch_size", "g_lr", "d_lr", "beta1", "beta2", "loss", "label_smoothing",
                "label_smoothing_mode", "dropout", "precision"):
        assert getattr(smoke, key) == getattr(recommended, key), key
    assert smoke.epochs * smoke.train_subset // smoke.batch_size == 900

import pytest

from grokray.config import (ConfigError, HopInjection, TrialConfig, load_trial_config, preset_injections,
                            replace_dotted)


def test_defaults_are_valid_and_flat_keys_are_dotted():
    cfg = load_trial_config(None)
    flat = cfg.flat()
    assert flat["data.phi"] == 7.2 and flat["model.n_loops"] == 2 and flat["seed"] == 0
    assert flat["train.betas"] == [0.9, 0.98]


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "t.yaml"
    # "3e-3" is a string to PyYAML (YAML 1.1); it must still be read as a float.
    path.write_text("seed: 3\ndata:\n  phi: 12.6\ntrain:\n  lr: 3e-3\n  betas: [0.9, 0.95]\n")
    cfg = load_trial_config(path, ["model.n_loops=4", "data.augmentation=both_full"])
    assert (cfg.seed, cfg.data.phi, cfg.train.lr, cfg.train.betas) == (3, 12.6, 0.003, (0.9, 0.95))
    assert cfg.model.n_loops == 4 and cfg.data.injections() == preset_injections("both_full", 12.6)
    # He et al.'s equalized supervision: k = round(phi) per injected OOD fact
    assert cfg.data.injections() == (HopInjection(1.0, 13), HopInjection(1.0, 13))


def test_custom_augmentation_mapping_and_name():
    cfg = load_trial_config(None, ["data.augmentation={hop1: {ratio: 0.25, k: 3}}"])
    assert cfg.data.injections() == (HopInjection(0.25, 3), HopInjection(0.0, 0))
    assert cfg.data.augmentation_name() == "hop1(0.25,3)+hop2(0,0)"
    # a mapping equal to a preset at this phi is named after it (phi 18: k 18; phi 7.2: k 7)
    assert load_trial_config(None, ["data.phi=18", "data.augmentation={hop2: {ratio: 1, k: 18}}"]
                             ).data.augmentation_name() == "hop2_full"
    assert load_trial_config(None, ["data.augmentation={hop2: {ratio: 1, k: 18}}"]).data.augmentation_name() \
        == "hop1(0,0)+hop2(1,18)"
    assert load_trial_config(None, ["data.augmentation={hop2: {ratio: 0.5, k: 4}}"]).data.augmentation_name() \
        == "hop1(0,0)+hop2(0.5,4)"


@pytest.mark.parametrize("override, key, value", [
    ("data.out_degree=30", "data.out_degree", 30),
    ("data.augmentation=everything", "data.augmentation", "everything"),
    ("data.augmentation={hop1: {ratio: 1.5, k: 3}}", "data.augmentation.hop1.ratio", 1.5),
    ("data.augmentation={hop1: {ratio: -0.1, k: 3}}", "data.augmentation.hop1.ratio", -0.1),
    ("data.augmentation={hop1: {ratio: 0.5, k: -1}}", "data.augmentation.hop1.k", -1),
    ("data.augmentation={hop3: {}}", "data.augmentation.hop3", {}),
    ("data.ood_fraction=1.0", "data.ood_fraction", 1.0),
    ("data.phi=-1", "data.phi", -1.0),
    ("data.n_entitys=10", "data.n_entitys", 10),
    ("model.n_heads=3", "model.n_heads", 3),
    ("model.n_loops=0", "model.n_loops", 0),
    ("model.d_model=1.5", "model.d_model", 1.5),
    ("train.lr=fast", "train.lr", "fast"),
    ("train.lr=0", "train.lr", 0.0),
    ("train.precision=fp8", "train.precision", "fp8"),
    ("train.lr_schedule=cosine", "train.lr_schedule", "cosine"),
    ("train.betas=[0.9]", "train.betas", [0.9]),
    ("train.device=tpu", "train.device", "tpu"),
    ("train.checkpoint_steps=[10, -5]", "train.checkpoint_steps", [10, -5]),
    ("train.reinject_input=true", "train.reinject_input", True),
    ("seed=abc", "seed", "abc"),
    ("trian.lr=1", "trian", {"lr": 1}),
])
def test_bad_values_are_one_line_errors_naming_key_and_value(override, key, value):
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, [override])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{key}:"), msg
    assert repr(value) in msg, msg


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  phi: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML: line"):
        load_trial_config(bad)
    bad.write_text("data:\n  n_relations: 5\n  out_degree: 9\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.out_degree: must be <= data\.n_relations \(5\) \(got 9\)"):
        load_trial_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_trial_config(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_trial_config(bad)


def test_override_syntax_error():
    with pytest.raises(ConfigError, match=r"--set: an override must look like key=value \(got 'phi'\)"):
        load_trial_config(None, ["phi"])


def test_replace_dotted_validates():
    cfg = replace_dotted(TrialConfig(), {"data.phi": 3.6, "seed": 2})
    assert cfg.data.phi == 3.6 and cfg.seed == 2
    with pytest.raises(ConfigError, match="model.n_loops"):
        replace_dotted(cfg, {"model.n_loops": -1})


def test_a_section_mapping_sets_several_keys_together():
    cfg = replace_dotted(TrialConfig(), {"model": {"n_layers": 2, "n_loops": 1}, "data.phi": 3.6})
    assert (cfg.model.n_layers, cfg.model.n_loops, cfg.model.d_model, cfg.data.phi) == (2, 1, 128, 3.6)
    with pytest.raises(ConfigError, match=r"^model\.n_loopz: unknown key"):
        replace_dotted(TrialConfig(), {"model": {"n_loopz": 1}})

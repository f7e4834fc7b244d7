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


# --------------------------------------------------------------------------- files and limits (issue 12)

def test_duplicate_keys_are_refused_with_their_lines(tmp_path):
    from grokray.config import read_yaml

    path = tmp_path / "t.yaml"
    path.write_text("data:\n  phi: 1.0\n  n_entities: 30\n  phi: 2.0\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: invalid YAML: line 4, column 3: duplicate key 'phi' "
                                          r"\(first on line 2\)$"):
        read_yaml(path)
    path.write_text("a: &base {x: 1}\nb:\n  <<: *base\n  x: 2\n")  # a merge key still overrides
    assert read_yaml(path) == {"a": {"x": 1}, "b": {"x": 2}}
    path.write_text("a: {x: 1}\nb: {x: 1}\n")  # the same key in two mappings is no duplicate
    assert read_yaml(path) == {"a": {"x": 1}, "b": {"x": 1}}


def test_loading_stays_safe(tmp_path):
    from grokray.config import UniqueKeyLoader, read_yaml

    import yaml

    assert issubclass(UniqueKeyLoader, yaml.SafeLoader)
    path = tmp_path / "t.yaml"
    path.write_text("x: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="could not determine a constructor for the tag"):
        read_yaml(path)


@pytest.mark.parametrize("data, problem", [
    (b"", "file is empty"),
    (b"\n \n", "file is empty"),
    (b"# only a comment\n", "file holds no YAML document"),
    (b"\x89PNG\r\n\x1a\n\x00", "not UTF-8 text (byte 0x89 at offset 0): a binary file"),
    (b"a: 1\x00", "a binary file, not YAML text (a NUL byte at offset 4)"),
    ("a: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 6): text in another encoding"),
    ("a: 1\n".encode("utf-16"), "UTF-16 or UTF-32 text, not UTF-8"),
    (b"a: " + b"[" * 1000 + b"]" * 1000, "invalid YAML: nested too deeply"),
])
def test_files_that_are_no_trial_config_name_the_file(tmp_path, data, problem):
    path = tmp_path / "t.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_trial_config(path)
    assert str(err.value).startswith(f"{path}: {problem}") and "\n" not in str(err.value)


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_bytes("\ufeffdata: {phi: 3.6}\n".encode())
    assert load_trial_config(path).data.phi == 3.6


@pytest.mark.parametrize("override, key, value", [
    ("train.max_steps=1e30", "train.max_steps", int(1e30)),
    ("train.warmup_steps=10000000000", "train.warmup_steps", 10**10),
    ("data.probe_size=99999999999999999999", "data.probe_size", 99999999999999999999),
    ("seed=-1", "seed", -1),
    ("data.seed=4294967296", "data.seed", 2**32),
    ("train.threads=5000", "train.threads", 5000),
    ("train.eval_per_decade=1001", "train.eval_per_decade", 1001),
    ("train.device=cuda:x", "train.device", "cuda:x"),
    ("train.device=cudax", "train.device", "cudax"),
    ("data.n_entities=100000000", "data.n_entities", 10**8),
    ("data.out_degree=20000", "data.out_degree", 20000),
    ("model.d_model=100000", "model.d_model", 100000),
    ("data.augmentation={hop1: {ratio: 1, k: 10000000000}}", "data.augmentation.hop1.k", 10**10),
])
def test_absurd_sizes_are_refused_by_key(override, key, value):
    overrides = [override, "data.n_relations=20000"] if "out_degree" in override else [override]
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, overrides)
    msg = str(err.value)
    assert msg.startswith(f"{key}:") and "\n" not in msg, msg
    assert f"(got {value!r})" in msg, msg


def test_the_largest_sane_values_pass():
    from grokray.config import MAX_SEED

    cfg = load_trial_config(None, [f"seed={MAX_SEED}", "data.seed=0", "train.max_steps=1000000000",
                                   "train.threads=4096", "train.eval_per_decade=1000", "train.device=cuda:3"])
    assert cfg.seed == MAX_SEED and cfg.train.max_steps == 10**9


@pytest.mark.parametrize("text, problem", [
    (".phi=1", "--set: a dotted key has an empty part"),
    ("data..phi=1", "--set: a dotted key has an empty part"),
    ("data.=1", "--set: a dotted key has an empty part"),
    ("data.augmentation={hop1: {k: 1}, hop1: {k: 2}}", "data.augmentation: invalid YAML value: duplicate key 'hop1'"),
])
def test_override_keys_and_values(text, problem):
    with pytest.raises(ConfigError) as err:
        load_trial_config(None, [text])
    assert str(err.value).startswith(problem), str(err.value)


def test_a_bad_value_is_shown_bounded_on_one_line():
    err = ConfigError("must be a number", key="data.phi", value=list(range(10_000)))
    assert len(str(err)) < 200 and str(err).endswith("...])")
    assert "\n" not in str(ConfigError("two\nlines", key="k", value="a\nb"))

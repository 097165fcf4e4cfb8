"""Config schema: paper defaults, YAML + overrides, and one-line errors naming key, value and what is allowed."""

from pathlib import Path

import pytest
import yaml

from opdctl.config.files import demo_config_text, load_config, validate
from opdctl.errors import BackendError, ConfigError

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_schema_defaults_are_the_papers():
    config = validate({})
    assert (config.loss.estimator, config.loss.k, config.loss.weighting) == ("topk", 16, "student_p")
    assert (config.prune.metric, config.prune.threshold, config.prune.w_drop, config.prune.w_base) == (
        "overlap_ratio",
        0.7,
        0.01,
        0.5,
    )
    b = config.budget
    assert (b.init_len, b.min_len, b.max_len, b.increment, b.hit_ratio, b.margin, b.patience) == (
        2048,
        1024,
        12288,
        100,
        0.1,
        100,
        3,
    )
    assert (config.rollout.n, config.rollout.temperature, config.rollout.max_new_tokens) == (4, 1.0, 12288)
    assert (config.optim.lr, config.optim.steps, config.optim.prompts_per_step) == (1e-6, 203, 64)
    assert config.prune_k == 16


def test_no_config_means_the_embedded_demo():
    config = load_config()
    assert config.data.source == "demo"
    assert config.student.model == "demo:student" and config.teacher.model == "demo:teacher"


def test_examples_demo_is_the_embedded_default():
    assert (EXAMPLES / "demo.yaml").read_text() == demo_config_text()


@pytest.mark.parametrize("name", ["demo.yaml", "r1-distill-1.5b.yaml", "r1-distill-1.5b-vllm.yaml", "qwen3-4b.yaml"])
def test_example_configs_validate(name):
    load_config(EXAMPLES / name)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("prune:\n  threshold: 0.9\noptim:\n  steps: 10\n")
    config = load_config(path, ["prune.threshold=0.8", "optim.steps=50", "eval.bench=[synthetic]", "prune.k=null"])
    assert config.prune.threshold == 0.8
    assert config.optim.steps == 50
    assert config.eval.bench == ["synthetic"]
    assert config.prune.k is None


def test_backend_keys_are_validated_by_the_plugin_schema():
    config = load_config(None, ["teacher.batch_size=3", "student.gradient_checkpointing=true"])
    assert config.teacher.batch_size == 3
    assert config.student.gradient_checkpointing is True
    dumped = yaml.safe_load(config.to_yaml())
    assert dumped["teacher"]["batch_size"] == 3  # plugin keys survive into the written config


def test_resolved_config_round_trips():
    config = load_config(None, ["optim.steps=7"])
    again = validate(yaml.safe_load(config.to_yaml()))
    assert again == config


def test_budget_max_len_defaults_to_the_hard_limit():
    config = validate({"rollout": {"max_new_tokens": 4096}, "budget": {"max_len": None, "init_len": 2048}})
    assert config.budget.max_len == 4096


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prune.treshold=0.8", "unknown config key 'prune.treshold'; allowed keys here: enable, metric, k, threshold"),
        ("prune.threshold=1.5", "config error: prune.threshold=1.5: input should be less than or equal to 1"),
        ("prune.threshold=0", "config error: prune.threshold=0: input should be greater than 0"),
        ("prune.w_drop=-0.1", "prune.w_drop=-0.1: input should be greater than or equal to 0"),
        ("prune.w_base=.nan", "prune.w_base=nan: input should be a finite number"),
        (
            "prune.metric=entropy",
            "prune.metric='entropy': input should be 'overlap_ratio', 'teacher_top_p'",  # then any other registered
        ),
        ("loss.estimator=full", "loss.estimator='full': input should be 'topk'"),
        ("optim.steps=many", "optim.steps='many': input should be a valid integer"),
        ("optim.steps=2.5", "optim.steps=2.5: input should be a valid integer"),
        ("rollout.n=0", "rollout.n=0: input should be greater than or equal to 1"),
        ("bogus.key=1", "unknown config key 'bogus'; allowed keys here: seed, student, teacher, teachers, data"),
        ("teacher.base_url=http://x", "unknown config key 'teacher.base_url'; allowed keys here: backend, model"),
        ("budget.init_len=99999", "budget.init_len=99999: must be <= budget.max_len (12288)"),
        ("prune.k=32", "prune.k=32: must be <= loss.k (16)"),
        ("optim.updates_per_step=65", "optim.updates_per_step=65: must be <= optim.prompts_per_step (64)"),
    ],
)
def test_bad_values_get_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLES / "r1-distill-1.5b.yaml", [override])
    text = str(info.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("old", "new"), [("budget.step", "budget.increment"), ("budget.shrink_patience", "budget.patience")]
)
def test_a_renamed_key_is_refused_naming_the_new_one(old, new):
    with pytest.raises(ConfigError, match=f"config key {old} is now {new}: rename it"):
        load_config(None, [f"{old}=5"])


def test_unknown_backend_lists_installed_ones():
    with pytest.raises(BackendError, match=r"unknown teacher backend 'nope': set teacher.backend to 'hf'"):
        load_config(None, ["teacher.backend=nope"])


def test_malformed_override():
    with pytest.raises(ConfigError, match=r"must look like section\.key=value"):
        load_config(None, ["prune.threshold"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in .*bad.yaml line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(scalar)


def test_docs_config_reference_is_current():
    from opdctl.config.reference import reference_markdown

    docs = Path(__file__).parent.parent / "docs" / "config.md"
    assert docs.read_text() == reference_markdown(), "regenerate with: opdctl config --reference > docs/config.md"


def test_the_teacher_returns_loss_k_ids_only_for_an_estimator_that_reads_them():
    assert validate({"loss": {"k": 8}, "prune": {"k": 2}}).teacher_k == 2  # the drift metric's
    assert validate({"loss": {"k": 8, "estimator": "forward_topk"}, "prune": {"k": 2}}).teacher_k == 8

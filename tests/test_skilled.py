"""The skilled SmolLM2 pair: adapters shipped for exactly the recipes in the code, merged once into the cache."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from opdctl.models import skilled
from opdctl.tools import skilled as recipes
from opdctl.tools.sft import SFTSettings


def test_every_recipe_ships_its_adapter():
    """A changed recipe (or word-problem generator, RECIPE_VERSION) must be rebuilt: python -m opdctl.tools.skilled."""
    assert tuple(recipes.RECIPES) == skilled.NAMES
    for name in recipes.RECIPES:
        bundled = skilled.bundled_adapter(name)
        assert bundled.name == recipes.digest(name), f"the adapter of {name} is stale: python -m opdctl.tools.skilled"
        assert json.loads((bundled / "recipe.json").read_text())["recipe"] == repr(recipes.RECIPES[name])
        assert (bundled / "adapter_model.safetensors").stat().st_size < 12e6  # half precision, rank 16


def test_a_recipe_change_changes_where_its_model_lives(monkeypatch):
    before = recipes.digest("teacher")
    changed = {**recipes.RECIPES, "teacher": replace(recipes.RECIPES["teacher"], steps=1)}
    monkeypatch.setattr(recipes, "RECIPES", changed)
    assert recipes.digest("teacher") != before


def test_unknown_skilled_models_are_named():
    from opdctl.errors import BackendError

    with pytest.raises(BackendError, match="use smollm2:teacher or smollm2:student"):
        skilled.resolve_skilled("smollm2:coach")


@pytest.mark.parametrize("strength", ["0", "1.5", "half", "-0.4", "nan"])
def test_a_strength_outside_0_to_1_is_named_with_an_example(strength):
    from opdctl.errors import BackendError

    with pytest.raises(BackendError, match=r"must be a number in \(0, 1\], e.g. smollm2:teacher@0.4"):
        skilled.resolve_skilled(f"smollm2:teacher@{strength}")


def test_the_student_knows_less_of_the_skill_than_the_teacher():
    teacher, student = recipes.RECIPES["teacher"], recipes.RECIPES["student"]
    assert isinstance(student, SFTSettings) and student.steps * 10 <= teacher.steps

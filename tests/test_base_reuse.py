"""A trained embedded base is reused only for the same recipe and corpus version."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from react.embedded.base import BaseRecipe, corpus_version, is_current
from react.models import CONFIG_FILE
from react.schemas import CORPUS_MANIFEST


def _dirs(tmp_path: Path, version: str, trained_on: str | None, recipe: BaseRecipe) -> tuple[Path, Path]:
    corpus, base = tmp_path / "corpus", tmp_path / "base"
    corpus.mkdir()
    base.mkdir()
    (corpus / CORPUS_MANIFEST).write_text(json.dumps({"version": version}))
    info = {"recipe": asdict(recipe)} | ({"corpus_version": trained_on} if trained_on else {})
    (base / CONFIG_FILE).write_text(json.dumps({"model_cfg": {}, "react": {"base": info}}))
    return corpus, base


def test_same_corpus_version_and_recipe_is_reused(tmp_path):
    corpus, base = _dirs(tmp_path, "embedded-v9", "embedded-v9", BaseRecipe(seed=0))
    assert corpus_version(corpus) == "embedded-v9"
    assert is_current(base, corpus, BaseRecipe(seed=0))
    assert not is_current(base, corpus, BaseRecipe(seed=1))


def test_base_of_another_corpus_version_is_not_reused(tmp_path):
    corpus, base = _dirs(tmp_path, "embedded-v9", "embedded-v8", BaseRecipe())
    assert not is_current(base, corpus, BaseRecipe())


def test_base_without_a_recorded_version_or_config_is_not_reused(tmp_path):
    corpus, base = _dirs(tmp_path, "embedded-v9", None, BaseRecipe())
    assert not is_current(base, corpus, BaseRecipe())
    assert not is_current(tmp_path / "nothing", corpus, BaseRecipe())


def _train_with(monkeypatch, tmp_path: Path, *flags: str) -> BaseRecipe:
    """The recipe ``react base train-embedded FLAGS`` would train with (training itself stubbed)."""
    import react.embedded.base as base
    from react.cli import run

    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "pretraining.parquet").write_bytes(b"")
    seen = []
    monkeypatch.setattr(base, "train_base", lambda corpus, out, recipe: seen.append(recipe))
    assert run(["base", "train-embedded", "--corpus", str(corpus), "--out", str(tmp_path / "b"), *flags]) == 0
    return seen[0]


def test_tower_shape_flags_reach_the_recipe_and_default_to_it(monkeypatch, tmp_path):
    assert _train_with(monkeypatch, tmp_path) == BaseRecipe()
    recipe = _train_with(monkeypatch, tmp_path, "--image-size", "96", "--patch-size", "4", "--width", "192",
                         "--layers", "6")
    assert (recipe.image_size, recipe.patch_size, recipe.width, recipe.layers) == (96, 4, 192, 6)
    assert asdict(recipe) == asdict(BaseRecipe()) | {"image_size": 96, "patch_size": 4, "width": 192, "layers": 6}


def test_bad_tower_shape_is_refused_in_one_line(monkeypatch, tmp_path, capsys):
    import react.embedded.base as base
    from react.cli import run

    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "pretraining.parquet").write_bytes(b"")
    monkeypatch.setattr(base, "train_base", lambda *a: (_ for _ in ()).throw(AssertionError("trained")))
    for flags, culprit in ((("--patch-size", "0"), "--patch-size"), (("--image-size", "60"), "whole number"),
                           (("--width", "100"), "--width")):
        assert run(["base", "train-embedded", "--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "b"),
                    *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0], err


def test_a_base_recorded_before_a_recipe_field_existed_is_still_current(tmp_path):
    corpus, base = _dirs(tmp_path, "embedded-v9", "embedded-v9", BaseRecipe())
    config = json.loads((base / CONFIG_FILE).read_text())
    del config["react"]["base"]["recipe"]["pool_type"]  # as bases trained before --pool recorded it
    (base / CONFIG_FILE).write_text(json.dumps(config))
    assert is_current(base, corpus, BaseRecipe())
    assert not is_current(base, corpus, BaseRecipe(pool_type="avg"))


def test_pool_flag_reaches_the_recipe_and_the_default_config_is_unchanged(monkeypatch, tmp_path):
    from react.embedded.base import model_config

    assert _train_with(monkeypatch, tmp_path, "--pool", "avg").pool_type == "avg"
    assert "pool_type" not in model_config(BaseRecipe())["vision_cfg"]
    assert model_config(BaseRecipe(pool_type="avg"))["vision_cfg"]["pool_type"] == "avg"


def test_a_base_saved_before_the_mosaic_loss_counts_as_trained_without_it(tmp_path):
    """The recipe's mosaic_weight default changed from 0 to 1: a base whose config predates
    the field was trained without the loss, so it is current only for a recipe without it."""
    corpus, base = _dirs(tmp_path, "embedded-v9", "embedded-v9", BaseRecipe(mosaic_weight=0.0))
    config = json.loads((base / CONFIG_FILE).read_text())
    del config["react"]["base"]["recipe"]["mosaic_weight"]
    (base / CONFIG_FILE).write_text(json.dumps(config))
    assert BaseRecipe().mosaic_weight == 1.0
    assert not is_current(base, corpus, BaseRecipe())
    assert is_current(base, corpus, BaseRecipe(mosaic_weight=0.0))


def test_mosaic_weight_flag_reaches_the_recipe(monkeypatch, tmp_path):
    assert _train_with(monkeypatch, tmp_path, "--mosaic-weight", "0").mosaic_weight == 0.0
    assert _train_with(monkeypatch, tmp_path, "--mosaic-weight", "0.5").mosaic_weight == 0.5

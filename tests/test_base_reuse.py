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

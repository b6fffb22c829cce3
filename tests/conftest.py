"""Shared fixtures: tiny generated data, a trained tokenizer, and the location of real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl is imported only for a cross-check

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KDLIGHT_DATA", REPO.parent / "shared" / "data"))
SPIDER = SHARED_DATA / "text2sql" / "spider"


@pytest.fixture(scope="session")
def sqlgen_root(tmp_path_factory) -> Path:
    """A small generated Spider-format dataset (built once per test session)."""
    from kdlight.tasks.text2sql.sqlgen import GeneratorSpec, ensure_generated

    return ensure_generated(GeneratorSpec(n_train=200, n_dev=40, seed=1), tmp_path_factory.mktemp("sqlgen"))


@pytest.fixture(scope="session")
def tokenizer(sqlgen_root):
    from kdlight.data.tokenizer import train_tokenizer
    from kdlight.tasks.text2sql.spider import PromptParts, SpiderSource, load_examples

    examples, _ = load_examples(SpiderSource(str(sqlgen_root)), "train.json", PromptParts())
    texts = [t for e in examples for t in (e.prompt, e.target)]
    return train_tokenizer(texts, vocab_size=400)


@pytest.fixture
def generate_calls(monkeypatch) -> list[int]:
    """The batch size of each call the teacher makes to the real `generate` (which still runs)."""
    from kdlight.models import generate
    from kdlight.training import teacher as teacher_module

    calls = []

    def counted(*args, **kwargs):
        calls.append(args[1].size)
        return generate(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "generate", counted)
    return calls

"""Compiled mode (PMG_JIT=1, as `pmg train-miniworld` runs): each stage's training step compiles and trains."""
import dataclasses

import pytest

from tasks.miniworld.train_clip import ClipStageConfig, train_clip
from tasks.miniworld.train_llama import LlamaStageConfig, train_llama
from tasks.miniworld.train_sd import SDStageConfig, train_sd


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setenv("PMG_JIT", "1")


def test_compiled_training_steps(compiled, tmp_path):
    clip = train_clip(tmp_path / "clip", 0, dataclasses.replace(ClipStageConfig.smoke(), steps=4, batch=16,
                                                                 n_train=64, n_val=16))
    sd = train_sd(tmp_path / "sd", tmp_path / "clip", 0,
                  dataclasses.replace(SDStageConfig.smoke(), steps=4, batch=4, n_train=32, eval_captions=2,
                                      sample_steps=2, eval_micro_batch=2))
    lm = train_llama(tmp_path / "llama", 0, dataclasses.replace(LlamaStageConfig.smoke(), steps=4, batch=4,
                                                                  n_users=64, n_eval=2))
    for m in (clip, sd, lm):
        assert m["steps"] == 4 and m["loss_first"] > 0
    assert sd["n_generated"] == 2

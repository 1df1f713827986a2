"""The evaluation's settings in one object (:class:`EvaluationConfig`), and how a study's
scoring options join them."""

import pytest

from lolaray.evaluation.evaluate import EvaluationConfig


def test_sequences_become_tuples_and_a_count_stays_a_count():
    config = EvaluationConfig(
        contexts=[2, 1], trajectories=[3, 0], starts=[0, 4], horizons=[[1, 20], [21, 60]]
    )
    assert config.contexts == (2, 1) and config.trajectories == (3, 0) and config.starts == (0, 4)
    assert config.horizons == ((1, 20), (21, 60))
    assert EvaluationConfig(trajectories=8).trajectories == 8
    assert hash(EvaluationConfig(contexts=[1])) == hash(EvaluationConfig(contexts=(1,)))


def test_the_study_scoring_options_replace_only_what_they_give():
    config = EvaluationConfig(members=4, trajectory_seed=1, starts=(0,))
    scored = config.with_scoring({"starts": [0, 8], "trajectory_seed": None, "vrmse_convention": "well"})
    assert scored.starts == (0, 8) and scored.trajectory_seed == 1 and scored.vrmse_convention == "well"
    assert scored.members == 4 and config.with_scoring(None) == config
    with pytest.raises(TypeError):
        config.with_scoring({"not_a_setting": 1})

"""Facts about the probe environments: their closed-form values are what tabular TD finds on their own
transitions, for the right targets and for each mistaken one."""

import jax
import numpy as np
import pytest

from rlzoo.env_adapter import VecEnv
from rlzoo.envs import make_env
from rlzoo.envs.probes import probe_values

GAMMA = 0.5


def collect(env_id: str, num_envs: int = 64, num_steps: int = 60) -> dict[str, np.ndarray]:
    """Transitions of the probe under random actions: phase, reward, terminated, truncated, and the phases of
    the true final observation and of the reset one, each [num_steps * num_envs]."""
    vec_env = VecEnv(make_env(env_id), num_envs)
    spec = vec_env.spec

    def step(carry, key):
        state, obs = carry
        action_key, env_key = jax.random.split(key)
        action = (jax.random.randint(action_key, (num_envs,), 0, 2) if spec.discrete
                  else jax.random.uniform(action_key, (num_envs, 1), minval=-1.0, maxval=1.0))
        state, ts = vec_env.step(env_key, state, action)
        return (state, ts.obs), (obs.argmax(-1), ts.reward, ts.terminated, ts.truncated, ts.final_obs.argmax(-1),
                                 ts.obs.argmax(-1))

    state, obs = vec_env.reset(jax.random.PRNGKey(0))
    _, out = jax.lax.scan(step, (state, obs), jax.random.split(jax.random.PRNGKey(1), num_steps))
    names = ("phase", "reward", "terminated", "truncated", "final_phase", "next_phase")
    return {name: np.asarray(x).reshape(-1) for name, x in zip(names, out)}


def tabular_fixed_point(data: dict[str, np.ndarray], ending: str, iterations: int = 200) -> np.ndarray:
    """Q(phase) = mean over the phase's transitions of the one-step target, iterated to its fixed point, with
    the target as `ending` says: bootstrapping stops at terminations ("terminate", "truncate"), also at
    truncations ("truncate_as_terminate"), or bootstraps from the reset observation ("reset_observation")."""
    done = data["terminated"] | data["truncated"]
    stops = data["terminated"] | (data["truncated"] if ending == "truncate_as_terminate" else False)
    bootstrap_phase = np.where(done & (ending == "reset_observation"), data["next_phase"], data["final_phase"])
    q = np.zeros(2)
    for _ in range(iterations):
        target = data["reward"] + GAMMA * (1.0 - stops) * q[bootstrap_phase]
        q = np.array([target[data["phase"] == p].mean() for p in (0, 1)])
    return q


@pytest.mark.parametrize("continuous", [False, True])
def test_probes_alternate_pay_from_the_second_phase_and_end_as_their_names_say(continuous):
    suffix = "Continuous-v0" if continuous else "-v0"
    terminating, truncating = collect("ProbeTerminate" + suffix), collect("ProbeTruncate" + suffix)
    for data in (terminating, truncating):
        np.testing.assert_array_equal(data["reward"], data["phase"])  # pays 1 from phase 1 only
        np.testing.assert_array_equal(data["final_phase"], 1 - data["phase"])  # alternates whatever the action
    assert not terminating["truncated"].any() and not truncating["terminated"].any()
    # Terminations only from phase 0, about half of them; truncations every third step, from phase 0.
    assert (terminating["phase"][terminating["terminated"]] == 0).all()
    assert 0.4 < terminating["terminated"][terminating["phase"] == 0].mean() < 0.6
    assert truncating["truncated"].mean() == pytest.approx(1 / 3, abs=0.02)
    assert (truncating["phase"][truncating["truncated"]] == 0).all()
    assert (truncating["next_phase"][truncating["truncated"]] == 0).all()  # the reset observation is phase 0


@pytest.mark.parametrize("env_id, ending", [
    ("ProbeTerminate-v0", "terminate"),
    ("ProbeTruncate-v0", "truncate"),
    ("ProbeTruncate-v0", "truncate_as_terminate"),
    ("ProbeTruncate-v0", "reset_observation"),
])
def test_closed_form_values_are_the_tabular_td_fixed_point_on_the_probes_own_transitions(env_id, ending):
    q = tabular_fixed_point(collect(env_id), ending)
    np.testing.assert_allclose(q, probe_values(GAMMA, ending), atol=0.03)


def test_each_mistake_moves_the_values_by_more_than_a_learning_test_tolerates():
    right = np.array(probe_values(GAMMA, "truncate"))
    for mistake in ("truncate_as_terminate", "reset_observation"):
        assert np.abs(np.array(probe_values(GAMMA, mistake)) - right).max() > 0.2, mistake
    assert np.abs(np.array(probe_values(GAMMA, "terminate")) - right).max() > 0.2
    with pytest.raises(ValueError, match="one of terminate, truncate"):
        probe_values(GAMMA, "bootstrap")


def test_the_probe_spec_keeps_the_action_space():
    assert make_env("ProbeTruncate-v0").spec.num_actions == 2 and make_env("ProbeTruncate-v0").spec.discrete
    spec = make_env("ProbeTruncateContinuous-v0").spec
    assert not spec.discrete and (spec.action_low, spec.action_high) == (-1.0, 1.0)
    assert make_env("ProbeTruncate-v0").spec.max_episode_steps == 3

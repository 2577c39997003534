"""Experiments as data: a task, its conditions, named protocols and the paper's claims.

An :class:`Experiment` says *what* to run; the runner (``runner.py``) only schedules its
condition x seed runs, and the report (``report.py``) only reads their folders. The config of
one run is resolved in one place, :func:`resolve_run_config`, from four layers::

    Config(env_id, rule, env_kwargs, hidden_size, seed, **condition.overrides,
           **protocol).resolve()

so a protocol (hyper-parameters such as ``lr``) is applied identically to every condition, and a
condition's overrides (``fanout``, ``trace_clip``, ...) are part of what the condition *is*.
A protocol may also name the learner, ``"algo": "plastic-ppo"`` (default ``plastic-a2c``), whose
config class (``PPOConfig`` or ``A2CConfig``) then takes the overrides: the built-in ``ppo``
protocol trains every condition with plastic PPO at its defaults.
With the ``paper`` protocol (no overrides) the config equals the one ``train.py`` builds from
``--env E --plasticity R --hidden-size N --seed S``, which is how existing ``train.py`` run
folders are adopted by a sweep.

User experiments are JSON files with the fields of :class:`Experiment` (``list NAME`` prints a
built-in one as a template); :func:`experiment_from_dict` validates every field and names the bad
one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bpm_agents.a2c import A2CConfig
from bpm_agents.networks import UNROLL_IMPLS
from bpm_agents.plasticity import RULES

#: a name that is safe as a folder name on every OS and in a shell
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: claim relations: ">" better is above worse; ">=" worse is not significantly above better
RELATIONS = (">", ">=")
#: A2CConfig fields an override may not set: they are the experiment's or the condition's own
#: fields (env_id, rule, hidden_size) or the sweep's (seed), so two layers never disagree
RESERVED = ("env_id", "rule", "hidden_size", "seed")
DEFAULT_PROTOCOL = "paper"
#: the protocol key that names the learner (not a config field)
ALGO_KEY = "algo"
DEFAULT_ALGO = "plastic-a2c"
#: issue 29's tuned plastic PPO, chosen on the maze with the ``simple`` rule on tuning seeds
#: 100-102 (``benchmarks/experiments/ppo_tuning.json``, ``benchmarks/results/ppo_tuning/``):
#: 10 episodes per update, 2 epochs of 10 minibatches of random (episode, step) pairs that each
#: replay every episode, the value head on the detached hidden state, advantages normalised over
#: the rollout, GAE lambda 0.9 (2 epochs since the second tuning round, 5 before it; lambda 0.9
#: since the fourth session's round, 0.95 before it), and minibatch steps whose gradient norm
#: exceeds 1,000 skipped (since the fifth session)
PPO_TUNED: dict[str, Any] = {
    ALGO_KEY: "plastic-ppo",
    "batch_size": 10,
    "n_epochs": 2,
    "n_minibatches": 10,
    "minibatch_unit": "steps",
    "detach_value": True,
    "advantage_scope": "rollout",
    "gae_lambda": 0.9,
    # against the exploding steps of a chaotic recurrent regime (a cue run's norms reached 1e14):
    # above every step of the maze and healthy cue runs (per-update means <= 16.3 over 20 steps,
    # so no step above 326), so those runs are unchanged by it
    "grad_skip": 1000.0,
}
#: the built-in protocols of every built-in experiment: the paper's A2C, plastic PPO at its
#: defaults (issue 16's fast protocol) and tuned (issue 29), each applied identically to every
#: condition
BUILTIN_PROTOCOLS: dict[str, dict[str, Any]] = {
    DEFAULT_PROTOCOL: {},
    "ppo": {ALGO_KEY: "plastic-ppo"},
    "ppo-tuned": PPO_TUNED,
}


def _trainer_classes() -> dict[str, Any]:
    from bpm_agents.training import trainer_classes

    return trainer_classes()


def protocol_algo(protocol: dict[str, Any]) -> str:
    """The learner a protocol trains with (``plastic-a2c`` unless it sets ``algo``)."""
    return str(protocol.get(ALGO_KEY, DEFAULT_ALGO))


class ExperimentError(ValueError):
    """A bad experiment definition, with a message naming the field and the value."""


@dataclass(frozen=True)
class Condition:
    """One arm of an experiment: a plasticity rule, a hidden size and extra A2CConfig fields."""

    name: str
    rule: str
    hidden_size: int | None = None  # None: the task's default for the rule
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """A claim of the paper about two conditions, checked by the report.

    ``relation`` ">": at the final common update the median of ``better`` is above the median of
    ``worse`` (and, with ``significant``, the rank-sum test gives p < 0.05). ``relation`` ">=":
    ``worse`` is significantly (p < 0.05) above ``better`` at no more than 5% of the compared
    updates (the test's own false-positive rate: "never" would fail by chance).
    """

    better: str
    worse: str
    relation: str = ">"
    significant: bool = False
    text: str = ""

    @property
    def label(self) -> str:
        return f"{self.better} {self.relation} {self.worse}"


@dataclass(frozen=True)
class Experiment:
    """A named experiment: task, conditions, protocols (A2CConfig overrides) and claims."""

    name: str
    env_id: str
    conditions: tuple[Condition, ...]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    protocols: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {k: dict(v) for k, v in BUILTIN_PROTOCOLS.items()}
    )
    claims: tuple[Claim, ...] = ()
    description: str = ""
    #: reference scores of the task (e.g. "random walk", "oracle"), mean episode reward, measured
    levels: dict[str, float] = field(default_factory=dict)

    def condition(self, name: str) -> Condition:
        for c in self.conditions:
            if c.name == name:
                return c
        raise ExperimentError(
            f"experiment {self.name!r} has no condition {name!r}; "
            f"conditions: {', '.join(c.name for c in self.conditions)}"
        )

    def protocol(self, name: str) -> dict[str, Any]:
        if name not in self.protocols:
            raise ExperimentError(
                f"experiment {self.name!r} has no protocol {name!r}; protocols: {', '.join(self.protocols)}"
            )
        return self.protocols[name]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the format of a user experiment file)."""
        return {
            "name": self.name,
            "description": self.description,
            "env_id": self.env_id,
            "env_kwargs": dict(self.env_kwargs),
            "conditions": [
                {"name": c.name, "rule": c.rule, "hidden_size": c.hidden_size, "overrides": dict(c.overrides)}
                for c in self.conditions
            ],
            "protocols": {k: dict(v) for k, v in self.protocols.items()},
            "claims": [
                {
                    "better": c.better,
                    "worse": c.worse,
                    "relation": c.relation,
                    "significant": c.significant,
                    "text": c.text,
                }
                for c in self.claims
            ],
            "levels": dict(self.levels),
        }


def resolve_run_config(
    experiment: Experiment, condition: str | Condition, protocol: str, seed: int
) -> A2CConfig:
    """The resolved config of one run of ``experiment`` (the one its ``config.json`` must hold);
    an :class:`A2CConfig`, or its subclass ``PPOConfig`` under a protocol with ``algo: plastic-ppo``."""
    cond = experiment.condition(condition) if isinstance(condition, str) else condition
    proto = dict(experiment.protocol(protocol))
    config_cls = _trainer_classes()[protocol_algo(proto)][0]
    proto.pop(ALGO_KEY, None)
    clash = sorted(set(cond.overrides) & set(proto))
    if clash:
        raise ExperimentError(
            f"condition {cond.name!r} and protocol {protocol!r} both set {clash}; a protocol "
            "must apply identically to every condition, so set each field in one place"
        )
    try:
        return config_cls(
            env_id=experiment.env_id,
            rule=cond.rule,
            env_kwargs=dict(experiment.env_kwargs),
            hidden_size=cond.hidden_size,
            seed=seed,
            **cond.overrides,
            **proto,
        ).resolve()
    except (TypeError, ValueError) as exc:
        raise ExperimentError(
            f"experiment {experiment.name!r}, condition {cond.name!r}, protocol {protocol!r}: {exc}"
        ) from None


# ---------------------------------------------------------------- validation of user input


def _config_fields(config_cls: type) -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(config_cls)}


def _check_value(where: str, key: str, value: Any, config_cls: type = A2CConfig) -> Any:
    """Type-check one override against the config field's annotation; return it normalised."""
    config_fields = _config_fields(config_cls)
    if key not in config_fields:
        allowed = sorted(k for k in config_fields if k not in RESERVED)
        raise ExperimentError(
            f"{where}: unknown {config_cls.__name__} field {key!r}; allowed: {', '.join(allowed)}"
        )
    if key in RESERVED:
        raise ExperimentError(
            f"{where}: {key!r} cannot be overridden here (it is set by the "
            f"{'sweep (--seeds)' if key == 'seed' else 'experiment or the condition'})"
        )
    kind = config_fields[key]
    if "bool" in kind:
        ok = isinstance(value, bool)
    elif "float" in kind:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value  # train.py parses floats: 1 and 1.0 must match
    elif "int" in kind:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif "str" in kind:
        ok = isinstance(value, str)
    elif "dict" in kind:
        ok = isinstance(value, dict)
    else:  # pragma: no cover - a new field type: accept, A2CConfig.resolve() validates
        ok = True
    if not ok:
        raise ExperimentError(f"{where}: {key} must be of type {kind}, got {value!r}")
    if key == "unroll_impl" and value not in UNROLL_IMPLS:
        raise ExperimentError(f"{where}: unroll_impl {value!r} is not one of {', '.join(UNROLL_IMPLS)}")
    return value


def _require(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ExperimentError(f"{where}: missing field {key!r}")
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ExperimentError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def _check_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ExperimentError(f"{where}: unknown field(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def _check_name(value: str, where: str) -> str:
    if not NAME_RE.match(value):
        raise ExperimentError(
            f"{where}: name {value!r} is not allowed; use letters, digits, '.', '_' and '-' "
            "(it becomes a folder name)"
        )
    return value


def experiment_from_dict(d: Any, source: str = "experiment") -> Experiment:
    """Validate a JSON experiment definition and build the :class:`Experiment`.

    Raises:
        ExperimentError: naming the bad field and value (and ``source``, e.g. the file).
    """
    if not isinstance(d, dict):
        raise ExperimentError(f"{source}: an experiment must be a JSON object, got {type(d).__name__}")
    _check_keys(
        d,
        {"name", "description", "env_id", "env_kwargs", "conditions", "protocols", "claims", "levels"},
        source,
    )
    name = _check_name(_require(d, "name", str, source), f"{source}: field 'name'")
    where = f"{source} (experiment {name!r})"
    env_id = _require(d, "env_id", str, where)
    env_kwargs = d.get("env_kwargs", {})
    if not isinstance(env_kwargs, dict):
        raise ExperimentError(f"{where}: field 'env_kwargs' must be an object, got {env_kwargs!r}")
    description = d.get("description", "")
    if not isinstance(description, str):
        raise ExperimentError(f"{where}: field 'description' must be a string, got {description!r}")

    raw_conditions = _require(d, "conditions", list, where)
    if not raw_conditions:
        raise ExperimentError(f"{where}: field 'conditions' is empty; give at least one condition")
    conditions: list[Condition] = []
    for i, c in enumerate(raw_conditions):
        cw = f"{where}: conditions[{i}]"
        if not isinstance(c, dict):
            raise ExperimentError(f"{cw} must be an object, got {c!r}")
        _check_keys(c, {"name", "rule", "hidden_size", "overrides"}, cw)
        cname = _check_name(_require(c, "name", str, cw), cw)
        cw = f"{where}: condition {cname!r}"
        rule = _require(c, "rule", str, cw)
        if rule not in RULES:
            raise ExperimentError(f"{cw}: rule {rule!r} is not one of {', '.join(RULES)}")
        hidden = c.get("hidden_size")
        if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1):
            raise ExperimentError(f"{cw}: hidden_size must be an integer >= 1 or null, got {hidden!r}")
        overrides = c.get("overrides", {})
        if not isinstance(overrides, dict):
            raise ExperimentError(f"{cw}: field 'overrides' must be an object, got {overrides!r}")
        overrides = {k: _check_value(f"{cw}, overrides", k, v) for k, v in overrides.items()}
        if cname in {x.name for x in conditions}:
            raise ExperimentError(f"{where}: condition name {cname!r} is used twice")
        conditions.append(Condition(cname, rule, hidden, overrides))

    raw_protocols = d.get("protocols", {DEFAULT_PROTOCOL: {}})
    if not isinstance(raw_protocols, dict) or not raw_protocols:
        raise ExperimentError(
            f"{where}: field 'protocols' must be a non-empty object of name -> overrides, got {raw_protocols!r}"
        )
    protocols: dict[str, dict[str, Any]] = {}
    for pname, overrides in raw_protocols.items():
        pw = f"{where}: protocol {pname!r}"
        _check_name(pname, pw)
        if not isinstance(overrides, dict):
            raise ExperimentError(f"{pw} must be an object of A2CConfig overrides, got {overrides!r}")
        overrides = dict(overrides)
        algo = overrides.pop(ALGO_KEY, DEFAULT_ALGO)
        algos = _trainer_classes()
        if algo not in algos:
            raise ExperimentError(f"{pw}: algo {algo!r} is not one of {', '.join(algos)}")
        checked = {k: _check_value(pw, k, v, algos[algo][0]) for k, v in overrides.items()}
        protocols[pname] = {ALGO_KEY: algo, **checked} if algo != DEFAULT_ALGO else checked

    claims: list[Claim] = []
    names = [c.name for c in conditions]
    for i, c in enumerate(d.get("claims", [])):
        kw = f"{where}: claims[{i}]"
        if not isinstance(c, dict):
            raise ExperimentError(f"{kw} must be an object, got {c!r}")
        _check_keys(c, {"better", "worse", "relation", "significant", "text"}, kw)
        better, worse = _require(c, "better", str, kw), _require(c, "worse", str, kw)
        for key, value in (("better", better), ("worse", worse)):
            if value not in names:
                raise ExperimentError(
                    f"{kw}: {key} {value!r} is not a condition; conditions: {', '.join(names)}"
                )
        if better == worse:
            raise ExperimentError(f"{kw}: better and worse are both {better!r}")
        relation = c.get("relation", ">")
        if relation not in RELATIONS:
            raise ExperimentError(f"{kw}: relation {relation!r} is not one of {', '.join(RELATIONS)}")
        significant = c.get("significant", False)
        if not isinstance(significant, bool):
            raise ExperimentError(f"{kw}: significant must be true or false, got {significant!r}")
        text = c.get("text", "")
        if not isinstance(text, str):
            raise ExperimentError(f"{kw}: text must be a string, got {text!r}")
        claims.append(Claim(better, worse, relation, significant, text))

    levels = d.get("levels", {})
    if not isinstance(levels, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in levels.values()
    ):
        raise ExperimentError(
            f"{where}: field 'levels' must be an object of name -> finite number (a reference "
            f'episode reward, e.g. {{"random walk": 7.75}}), got {levels!r}'
        )
    exp = Experiment(
        name,
        env_id,
        tuple(conditions),
        dict(env_kwargs),
        protocols,
        tuple(claims),
        description,
        {str(k): float(v) for k, v in levels.items()},
    )
    _check_resolves(exp)
    return exp


def _check_resolves(exp: Experiment) -> None:
    """Every condition x protocol must give a valid config, and the task must accept env_kwargs."""
    for pname in exp.protocols:
        for cond in exp.conditions:
            resolve_run_config(exp, cond, pname, seed=0)
    import gymnasium as gym

    try:
        gym.make(exp.env_id, **exp.env_kwargs).close()
    except (TypeError, ValueError) as exc:
        raise ExperimentError(
            f"experiment {exp.name!r}: env_kwargs {exp.env_kwargs!r} rejected by {exp.env_id}: {exc}"
        ) from None


def load_experiment_file(path: str | Path) -> Experiment:
    """Read and validate a user experiment JSON file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"experiment file {path} is not valid JSON: {exc}") from None
    return experiment_from_dict(data, source=str(path))


# ---------------------------------------------------------------- the paper's experiments

CUE = "bpm/CueReward-v0"
MAZE = "bpm/PlasticMaze-v0"
#: per maze size, benchmarks/maze_levels.py's means over 100,000 episodes (stderr: random walk
#: 0.03, oracle 0.2); the oracle knows the reward cell from the first step
MAZE_LEVELS = {
    9: {"random walk": 7.747, "oracle": 324.42},
    11: {"random walk": 5.367, "oracle": 269.53},
}
#: the cue task's levels: chance is 0 in expectation (benchmarks/cue_levels.py measured 0.012 +-
#: 0.013 over 100,000 episodes of random answers); the oracle knows the target and answers every
#: Go step right (18.208 +- 0.003, the mean number of trials; the same for fig1's and a5's cues)
CUE_LEVELS = {"chance": 0.0, "oracle": 18.21}
_MAZE_CONDITIONS = (
    Condition("simple-N100", "simple", 100),
    Condition("retroactive-N100", "retroactive", 100),
    Condition("hebbian-N101", "hebbian", 101),
    Condition("none-N139", "none", 139),
    Condition("none-N100", "none", 100),
)
_MAZE_CLAIMS = (
    Claim(
        "simple-N100",
        "hebbian-N101",
        ">",
        True,
        "modulated > non-modulated plasticity, rank-sum p < 0.05 over much of training",
    ),
    Claim("retroactive-N100", "hebbian-N101", ">", False, "modulated > non-modulated plasticity"),
    Claim(
        "simple-N100",
        "none-N139",
        ">",
        False,
        "modulated plasticity > the parameter-matched plain RNN",
    ),
)
_CUE_CONDITIONS = tuple(Condition(f"{r}-N200", r, 200) for r in ("none", "hebbian", "simple", "retroactive"))

BUILTIN: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            name="fig1",
            env_id=CUE,
            description="Paper Fig. 1: cue-reward association with 20-bit random cues, N=200 for every rule.",
            conditions=_CUE_CONDITIONS,
            levels=CUE_LEVELS,
            claims=(
                Claim(
                    "simple-N200",
                    "hebbian-N200",
                    ">",
                    True,
                    "simple neuromodulation learns the task, non-modulated plasticity stays at chance",
                ),
                Claim(
                    "retroactive-N200",
                    "hebbian-N200",
                    ">",
                    True,
                    "retroactive neuromodulation learns the task, non-modulated plasticity stays at chance",
                ),
                Claim(
                    "simple-N200",
                    "none-N200",
                    ">",
                    True,
                    "simple neuromodulation learns the task, the plain RNN stays at chance",
                ),
                Claim(
                    "retroactive-N200",
                    "none-N200",
                    ">",
                    True,
                    "retroactive neuromodulation learns the task, the plain RNN stays at chance",
                ),
            ),
        ),
        Experiment(
            name="a5",
            env_id=CUE,
            env_kwargs={"fixed_cues": True},
            description=(
                "Paper appendix A.5: the cue task with 4 fixed one-hot 4-bit cues; non-modulated "
                "plasticity learns here, more slowly than the modulated networks."
            ),
            conditions=_CUE_CONDITIONS,
            levels=CUE_LEVELS,
            claims=(
                Claim(
                    "hebbian-N200",
                    "none-N200",
                    ">",
                    True,
                    "non-modulated plasticity learns on fixed low-dimensional cues",
                ),
                Claim(
                    "simple-N200",
                    "hebbian-N200",
                    ">=",
                    False,
                    "the modulated network learns no slower than non-modulated plasticity",
                ),
            ),
        ),
        Experiment(
            name="fig2",
            env_id=MAZE,
            description=(
                "Paper Fig. 2: the grid maze; modulated N=100, hebbian N=101 and rnn N=139 match "
                "parameter counts (~22.5k), rnn N=100 matches the size."
            ),
            conditions=_MAZE_CONDITIONS,
            claims=_MAZE_CLAIMS,
            levels=MAZE_LEVELS[9],
        ),
        Experiment(
            name="fig2-release",
            env_id=MAZE,
            env_kwargs={"size": 11},
            description=(
                "Paper Fig. 2 on the original release's maze: a 13x13 array (11x11 interior, 24 "
                "pillars), fig2's conditions and claims."
            ),
            conditions=_MAZE_CONDITIONS,
            claims=_MAZE_CLAIMS,
            levels=MAZE_LEVELS[11],
        ),
    )
}


def get_experiment(name_or_path: str) -> Experiment:
    """A built-in experiment by name, or a user experiment from a ``.json`` file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    if name_or_path.endswith(".json") or Path(name_or_path).is_file():
        return load_experiment_file(name_or_path)
    raise ExperimentError(
        f"unknown experiment {name_or_path!r}; built-in: {', '.join(BUILTIN)}, or a path to a .json "
        "definition (print a template with 'list fig2')"
    )

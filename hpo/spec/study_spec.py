"""``StudySpec``: a study as declared in ``studies/*.yaml``, validated all at once.

``load_spec(path)`` reads a YAML file and either returns a ``StudySpec`` or raises one
``SpecError`` that lists every problem with its key and a way to fix it. The spec travels to
workers inside the storage as JSON (``to_json`` / ``from_json``), so a worker needs no copy of
the file.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeGuard

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from sklearn.metrics import get_scorer_names

from hpo.errors import SpecError, did_you_mean
from hpo.files import read_input
from hpo.spec.conditions import absent_from, condition_problems, point_problems
from hpo.spec.names import (
    BOOLEAN_PARAMS,
    CRITERIA,
    DATASETS,
    MODELS,
    NAMED_VALUES,
    NET_PARAMS,
    OPTIMIZER_ARGS,
)
from hpo.spec.objectives import MEASURES
from hpo.spec.pruning import (
    PATIENT_WRAPS,
    PRUNE_OVER,
    PRUNER_NAMES,
    PRUNERS,
    pruning_problem,
)
from hpo.spec.references import is_reference
from hpo.spec.rules import (
    FOLDS,
    GRID_POINTS,
    RULES,
    SPEC_BYTES,
    SPEC_DEPTH,
    SPEC_NODES,
    TIMEOUT,
    TRIALS,
    Bound,
    Rule,
    describe,
    value_problem,
    within,
)
from hpo.spec.sampling import SAMPLER_NAMES, SAMPLERS, object_only_options
from hpo.spec.spaces import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Param,
    expand_grid,
    grid_points,
    grid_size,
    grid_size_error,
    point_key,
    value_key,
)
from hpo.spec.stopping import stop_rule_problems

MAX_GRID_POINTS = int(GRID_POINTS.most)

#: The largest uncut box of a grid whose bounds name other parameters that is still walked
#: point by point to count what the cuts leave (about a second).
_MAX_GRID_WALK = 10 * MAX_GRID_POINTS

#: Seeds go to NumPy and scikit-learn, which take 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1


def _seed_problem(seed: Any) -> str | None:
    """Why ``seed`` cannot seed a random generator, or None (null means unseeded)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f"must be a whole number from 0 to {MAX_SEED} (or null), got {seed!r}"
    if not 0 <= seed <= MAX_SEED:
        return f"must be from 0 to {MAX_SEED} (or null), got {seed}; e.g. seed: 0"
    return None


def _check_seed(seed: int | None) -> int | None:
    problem = _seed_problem(seed)
    if problem:
        raise ValueError(problem)
    return seed


def _at_most(bound: Bound) -> Any:
    """A before-validator: a number above ``bound`` is refused with the bound's reason, and
    true/false is not a number (pydantic would read true as 1)."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, not {str(value).lower()}")
        if _is_finite_number(value) and value > bound.most:
            raise ValueError(bound.refusal(value))
        return value

    return check


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(BaseModel):
    """Which dataset, and its loader's options (``path``, ``root``, ``download``, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SamplerSpec(_Section):
    """``grid``, ``auto`` or an Optuna sampler's name (``hpo.spec.sampling``); ``options`` go
    to the Optuna sampler's constructor."""

    name: Literal[SAMPLER_NAMES] = "tpe"  # type: ignore[valid-type]
    seed: int | None = 0
    options: dict[str, Any] = Field(default_factory=dict)

    _seed = field_validator("seed", mode="before")(_check_seed)


class PrunerSpec(_Section):
    """``none`` or a pruner's name (``hpo.spec.pruning``); ``options`` go to the pruner.
    ``over`` says what a trial's reports step over: its ``folds`` (the running mean after each
    fold), its ``epochs`` (the folds' mean held-out score after every ``report_every`` epochs;
    unset, about ten times a fit: ``hpo.spec.pruning.report_every``) or ``both`` (epochs of
    its first folds, then of the rest)."""

    name: Literal[PRUNER_NAMES] = "none"  # type: ignore[valid-type]
    over: Literal[PRUNE_OVER] = "folds"  # type: ignore[valid-type]
    report_every: int | None = Field(default=None, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)


class CVSpec(_Section):
    """K-fold cross-validation: ``KFold``, or ``StratifiedKFold`` when ``stratified``."""

    folds: int = Field(default=5, ge=2)
    shuffle: bool = True
    seed: int | None = 0
    stratified: bool = False

    _seed = field_validator("seed", mode="before")(_check_seed)
    _folds = field_validator("folds", mode="before")(_at_most(FOLDS))


class BudgetSpec(_Section):
    """How many trials the whole study runs (across all workers), and optional stops: a
    timeout (the whole study's seconds, counted from its first trial), a ``target`` value
    whose reaching ends it, and a ``patience`` of completed trials without a better value
    (``hpo.spec.stopping``); after any of them no worker starts a trial (running ones
    finish; ``hpo.service.worker``). A grid's budget defaults to its number of points."""

    trials: int | None = Field(default=None, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    target: float | None = Field(default=None, allow_inf_nan=False)
    patience: int | None = Field(default=None, ge=1)

    _trials = field_validator("trials", mode="before")(_at_most(TRIALS))
    _timeout = field_validator("timeout", mode="before")(_at_most(TIMEOUT))
    _patience = field_validator("patience", mode="before")(_at_most(TRIALS))


class BoundSpec(_Section):
    """A constraint's bounds: ``min``, ``max`` or both (``hpo.spec.objectives``)."""

    min: float | None = None
    max: float | None = None


class PickSpec(_Section):
    """Which trial of a Pareto front the refit takes (``objectives.pick_from_front``)."""

    #: Default (None): 0, only the front's best first objective.
    best_first_within: float | None = Field(default=None, ge=0)


class RefitSpec(_Section):
    """How ``hpo refit`` trains its net, and which trial it takes when the study has several
    objectives (``pick``)."""

    pick: PickSpec = PickSpec()
    #: After early stopping on the validation rows has chosen the epochs, fit again on the
    #: training and validation rows together for that many (``hpo.results.refit``).
    include_validation: bool = False

    @property
    def trained_on(self) -> str:
        """The rows the refit's net trains on, in words for notes and reports."""
        if self.include_validation:
            return "the training and validation splits together"
        return "the whole training split"


class MlflowSpec(_Section):
    """``tracking.mlflow``: every finished trial, and the refit, as runs of one experiment."""

    #: MLflow's tracking URI: ``sqlite:///mlflow.db``, ``http://host:5000``, ...
    uri: str = Field(min_length=1)
    #: The experiment's name. Default (None): the study's name.
    experiment: str | None = Field(default=None, min_length=1)


class TensorboardSpec(_Section):
    """``tracking.tensorboard``: every finished trial, and the refit, as TensorBoard event
    files under ``dir/<study>/``."""

    dir: str = Field(min_length=1)


class TrackingSpec(_Section):
    """Where finished trials are logged besides the Optuna storage (``hpo.service.tracking``);
    each tracker is optional, and a failed write never fails a trial."""

    mlflow: MlflowSpec | None = None
    tensorboard: TensorboardSpec | None = None


class StudySpec(_Section):
    """A study: what to tune, on which data, how to search and how to score."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=200)
    description: str = ""
    model: str
    dataset: DatasetSpec
    criterion: str | None = None
    preprocess: Literal["standard", "minmax", "none"] | None = None
    augment: Literal["none", "shifts"] = "none"
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    direction: Literal["maximize", "minimize"] = "maximize"
    scoring: str
    #: More objectives after ``scoring`` (``scoring: [accuracy, n_parameters]`` in a file).
    objectives: list[str] = Field(default_factory=list)
    constraints: dict[str, BoundSpec] = Field(default_factory=dict)
    refit: RefitSpec = RefitSpec()
    cv: CVSpec = CVSpec()
    budget: BudgetSpec = BudgetSpec()
    tracking: TrackingSpec = TrackingSpec()
    fixed: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Param] = Field(default_factory=dict)
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _scoring_list(cls, raw: Any) -> Any:
        """``scoring: [a, b, ...]``: ``a`` is the scorer, the rest go to ``objectives``."""
        if isinstance(raw, dict) and isinstance(raw.get("scoring"), list) and raw["scoring"]:
            first, *rest = raw["scoring"]
            return {**raw, "scoring": first, "objectives": [*rest, *raw.get("objectives", [])]}
        return raw

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        if model not in MODELS and not is_reference(model):
            raise ValueError(
                f"unknown model {model!r}{did_you_mean(model, MODELS)} (built-in: "
                f"{', '.join(MODELS)}; or your own nn.Module as package.module:ClassName)"
            )
        return model

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, criterion: str | None) -> str | None:
        if criterion is not None and criterion not in CRITERIA and not is_reference(criterion):
            raise ValueError(
                f"unknown loss {criterion!r}{did_you_mean(criterion, CRITERIA)} (built-in: "
                f"{', '.join(CRITERIA)}; or your own as package.module:ClassName)"
            )
        return criterion

    @property
    def custom_code(self) -> list[tuple[str, str]]:
        """The user code the spec names, as (key, ``package.module:Name``) pairs."""
        named = (("model", self.model), ("criterion", self.criterion))
        return [(key, value) for key, value in named if value is not None and is_reference(value)]

    @property
    def preprocessing(self) -> str:
        """``preprocess``, or the dataset's default when the spec leaves it out."""
        if self.preprocess is not None:
            return self.preprocess
        return DATASETS[self.dataset.name].preprocess

    @property
    def n_trials(self) -> int:
        """The study's trial budget: ``budget.trials``, or the grid's size for a grid."""
        if self.budget.trials is not None:
            return self.budget.trials
        return len(self.enqueue) + len(grid_points(self.space, skip=self.enqueue))

    def configuration(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full configuration: the ``fixed`` keys merged with its searched ``params``.

        The one place that decides how the two combine; the result is skorch ``set_params``
        keys, ready for the net. A spec never has a key in both (validation rejects it), so
        ``params`` winning a tie matters only for a caller passing keys outside ``space``.

        ``preprocess`` (always), ``augment`` and ``criterion`` (when the spec names them) come
        first, as the net parameters of those names.

        Args:
            params: The searched values, e.g. a trial's ``params``.

        Returns:
            A new dict; neither ``fixed`` nor ``params`` is changed.
        """
        top: dict[str, Any] = {"preprocess": self.preprocessing}
        if self.augment != "none":
            top["augment"] = self.augment
        if self.criterion is not None:
            top["criterion"] = self.criterion
        return {**top, **self.fixed, **params}

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, source: str = "<stored spec>") -> StudySpec:
        """A spec from ``to_json``'s text, checked as a study file is (``parse_spec``).

        Raises:
            SpecError: the text is not JSON, or the spec breaks a rule.
        """
        try:
            raw = json.loads(text)
        except (TypeError, ValueError):
            raise SpecError(source, ["it is not JSON text"]) from None
        except RecursionError:
            raise SpecError(
                source, [f"it nests more than {SPEC_DEPTH.most} levels deep"]
            ) from None
        return parse_spec(raw, source)


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of the file gives the same key twice."""


class SpecTooLargeError(yaml.composer.ComposerError):
    """A study file nests deeper than ``SPEC_DEPTH``, or holds more values than
    ``SPEC_NODES`` once its aliases are expanded."""


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read it as the float YAML 1.2 and
    every user mean. A key given twice in one mapping, at any depth, is an error (plain YAML
    keeps the last one silently); keys brought in by a ``<<`` merge may still be overridden.

    Aliases (``&base`` ... ``*base``) and merges are read, but a file nests at most
    ``SPEC_DEPTH`` deep and holds at most ``SPEC_NODES`` values with every alias expanded:
    counted on the composed graph, before anything is built, so an alias bomb (ten aliases of
    ten aliases of ..., billions of values from a few lines) is refused in milliseconds."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # The composer recurses once per level: refuse before Python's recursion limit does.
        self._depth += 1
        try:
            if self._depth > SPEC_DEPTH.most:
                raise SpecTooLargeError(
                    None,
                    None,
                    f"nests more than {SPEC_DEPTH.most} levels deep: {SPEC_DEPTH.why}",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        size = _expanded_size(node, {}, int(SPEC_NODES.most))
        if size > SPEC_NODES.most:
            raise SpecTooLargeError(
                None,
                None,
                f"holds more than {SPEC_NODES.most:,} values once its aliases are expanded: "
                f"{SPEC_NODES.why}",
                node.start_mark,
            )
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key; construction reports it
                if first is not None:
                    raise DuplicateKeyError(
                        None,
                        None,
                        f"duplicate key {key!r} (first given on line {first + 1}); "
                        "keep only one of them",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], most: int) -> int:
    """How many values ``node`` stands for with every alias expanded (an alias is the node
    it names, shared in the graph); counting stops once past ``most``."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[yaml.Node] = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, most)
        if size > most:
            break
    sizes[id(node)] = size
    return size


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file.

    Raises:
        SpecError: the file is missing, is not YAML, or breaks any rule; every problem found
            is listed in the one error.
    """
    path = Path(path)
    try:
        raw = yaml.load(read_input(path, SPEC_BYTES).decode("utf-8"), Loader=_SpecLoader)
    except FileNotFoundError:
        raise SpecError(
            str(path), ["the file does not exist; studies live in studies/*.yaml"]
        ) from None
    except IsADirectoryError:
        raise SpecError(
            str(path), ["this is a folder; give one study file, e.g. studies/digits-mlp-tpe.yaml"]
        ) from None
    except OSError as error:
        # A FIFO, a device, a file too large (hpo.files), or one that cannot be opened.
        raise SpecError(str(path), [f"cannot read it: {error.strerror or error}"]) from None
    except SpecTooLargeError as error:
        raise SpecError(str(path), [f"the file is {error.problem}"]) from None
    except UnicodeDecodeError as error:
        raise SpecError(
            str(path), [f"the file is not UTF-8 text ({error.reason} at byte {error.start})"]
        ) from None
    except DuplicateKeyError as error:
        mark = error.problem_mark
        raise SpecError(
            str(path), [f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}"]
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(str(path), [f"{where}YAML syntax error: {problem}"]) from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str = "<spec>") -> StudySpec:
    """Validate an already-parsed mapping; see ``load_spec``."""
    if not isinstance(raw, dict):
        raise SpecError(source, ["the file must hold a mapping of keys (name: ..., model: ...)"])
    problems: list[str] = []
    spec: StudySpec | None = None
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as error:
        problems.extend(_describe(error, raw))
    problems.extend(_semantic_problems(raw))
    non_finite = _non_finite_problems(raw)
    if non_finite:
        # A NaN or infinity is the one problem of its key: drop what other checks made of it.
        flagged = {problem.partition(": ")[0] for problem in non_finite}
        problems = non_finite + [
            problem
            for problem in problems
            if not any(_is_under(problem.partition(": ")[0], key) for key in flagged)
        ]
    if spec is not None and not problems and spec.sampler.name == "grid":
        problems.extend(_grid_budget_problems(spec))
    if spec is not None and not problems:
        problems.extend(filter(None, [pruning_problem(spec)]))
    if problems:
        raise SpecError(source, list(dict.fromkeys(problems)))
    assert spec is not None
    return spec


def _non_finite_problems(value: Any, key: str = "") -> list[str]:
    """A problem for every NaN or infinity anywhere in the spec (YAML ``.nan``, ``.inf``),
    each named by its key, e.g. ``space.lr.low`` or ``enqueue[0].lr``."""
    if _is_non_finite(value):
        written = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
        return [
            f"{key or '(top level)'}: must be a finite number, got {written}; "
            "NaN and infinities poison a study; give a real number"
        ]
    if isinstance(value, dict):
        return [
            problem
            for name, item in value.items()
            for problem in _non_finite_problems(item, f"{key}.{name}" if key else str(name))
        ]
    if isinstance(value, list):
        return [
            problem
            for i, item in enumerate(value)
            for problem in _non_finite_problems(item, f"{key}[{i}]")
        ]
    return []


def _is_under(key: str, flagged: str) -> bool:
    """Whether the problem key ``key`` is ``flagged`` or a key inside it."""
    return key == flagged or key.startswith((flagged + ".", flagged + "["))


def _is_finite_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


#: Parts of a pydantic error location that name a union's arm, not a key of the file.
_ARM_TAGS = frozenset({"int", "float", "categorical", "str", "bool", "none", "is-instance"})


def _describe(error: ValidationError, raw: Mapping[str, Any]) -> list[str]:
    problems: dict[str, str] = {}
    for item in error.errors():
        loc = _key_path(item["loc"], raw)
        key = ".".join(loc) or "(top level)"
        kind = item["type"]
        if kind == "string_pattern_mismatch" and loc == ["name"]:
            message = (
                f"{item['input']!r} must start with a letter or digit and hold only letters, "
                "digits, '_', '.' and '-'"
            )
        elif kind == "extra_forbidden":
            message = f"unknown key{did_you_mean(loc[-1], _siblings(loc))}"
        elif kind == "missing":
            message = "required key is missing"
        elif kind in ("union_tag_not_found", "union_tag_invalid"):
            key, message = f"{key}.type", "must be one of int, float, categorical"
        elif kind == "literal_error":
            message = f"{item['msg'].lower()}, got {item['input']!r}"
        else:
            message = item["msg"].removeprefix("Value error, ")
        # A value failing every arm of a union (int | str) is one problem: keep the first.
        problems.setdefault(key, f"{key}: {message}")
    return list(problems.values())


def _key_path(loc: tuple[int | str, ...], raw: Any) -> list[str]:
    """A pydantic error location as the keys of the file: the parts that name a union's arm
    (``int``, ``function-after[...]``) dropped, the file's own keys kept, brackets and all."""
    path, node = [], raw
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif str(part) in _ARM_TAGS or "[" in str(part):
            continue
        else:
            node = None  # a key the file lacks (a required one)
        path.append(str(part))
    return path


def _siblings(loc: list[str]) -> list[str]:
    if len(loc) == 3 and loc[0] == "space":
        return sorted(
            {f for cls in (IntParam, FloatParam, CategoricalParam) for f in cls.model_fields}
        )
    model: type[BaseModel] = StudySpec
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


@cache
def _constructor_args(cls: Callable[..., Any]) -> tuple[str, ...]:
    """The keyword arguments of an Optuna sampler's or pruner's constructor."""
    parameters = inspect.signature(cls).parameters
    return tuple(n for n in parameters if parameters[n].kind is not inspect.Parameter.VAR_KEYWORD)


def allowed_keys(model: str) -> list[str]:
    """Every parameter key a spec may set for ``model`` (skorch ``set_params`` keys), but
    ``criterion__*``, whose names depend on the loss, and a user's module's ``module__*``,
    which its constructor says (``hpo.engine.user_code``)."""
    module_keys = [f"module__{n}" for n in MODELS.get(model, ())]
    optimizer_keys = [f"optimizer__{n}" for n in OPTIMIZER_ARGS]
    return sorted(NET_PARAMS) + module_keys + optimizer_keys


def _key_problem(section: str, key: str, model: str) -> str | None:
    """Why ``key`` cannot be a parameter of ``model``'s net, or None. A user module's
    ``module__*`` and any ``criterion__*`` keys are checked against the constructors once the
    code is imported (``hpo.engine.user_code``)."""
    if not isinstance(key, str):
        return f"{section}.{key}: parameter names must be text"
    if key.startswith("criterion__") or (key.startswith("module__") and model not in MODELS):
        return None
    allowed = allowed_keys(model)
    if model in MODELS:
        hint = "module__* keys are the model's constructor arguments; see hpo/engine/models.py"
    else:
        hint = "module__* keys are your module's constructor arguments"
    if key in allowed:
        return None
    suggestion = did_you_mean(key, allowed)
    return f"{section}.{key}: not a parameter of the {model} net{suggestion} ({hint})"


def _given_values(
    key: str, fixed: Mapping[str, Any], space: Mapping[str, Any]
) -> list[tuple[str, Any]]:
    """The values ``key`` may take, each with its section: fixed, or a categorical's choices."""
    values = [("fixed", fixed[key])] if key in fixed else []
    param = space.get(key)
    if isinstance(param, CategoricalParam):
        values.extend(("space", choice) for choice in param.choices)
    return values


def _section(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    """``raw[key]`` when it is a mapping (its own validation says why when not), else {}."""
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _semantic_problems(raw: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    model = raw.get("model")
    fixed = _section(raw, "fixed")
    raw_space = _section(raw, "space")
    space = _valid_params(raw_space)

    if isinstance(model, str) and (model in MODELS or is_reference(model)):
        for section, keys in (("fixed", fixed), ("space", raw_space)):
            for key in keys:
                problem = _key_problem(section, key, model)
                if problem:
                    problems.append(problem)
    for key in set(fixed) & set(raw_space):
        problems.append(f"fixed.{key}: also in space; keep it in one of the two")

    for key, names in NAMED_VALUES.items():
        for where, value in _given_values(key, fixed, space):
            if not isinstance(value, str) or value not in names:
                problems.append(
                    f"{where}.{key}: unknown name {value!r}{did_you_mean(str(value), names)} "
                    f"(valid: {', '.join(names)})"
                )
    for key in BOOLEAN_PARAMS:
        for where, value in _given_values(key, fixed, space):
            if not isinstance(value, bool):
                problems.append(f"{where}.{key}: must be true or false, got {value!r}")

    problems.extend(_rule_problems(model, fixed, space))

    problems.extend(condition_problems(space, fixed))
    earlier: list[str] = []
    for name, param in space.items():
        for ref in param.references():
            if ref not in earlier or isinstance(space[ref], CategoricalParam):
                problems.append(
                    f"space.{name}: bound {ref!r} must name an earlier int or float parameter "
                    f"in space{did_you_mean(ref, earlier)}"
                )
        earlier.append(name)
        problems.extend(_reference_range_problems(name, param, space))

    scoring = raw.get("scoring")
    if isinstance(scoring, str) and scoring not in get_scorer_names() and scoring not in MEASURES:
        problems.append(
            f"scoring: {scoring!r} is not a scikit-learn scorer name"
            f"{did_you_mean(scoring, get_scorer_names())} (see sklearn.metrics.get_scorer_names)"
        )
    if raw.get("direction") == "minimize" and isinstance(scoring, str):
        problems.append(
            "direction: scikit-learn scorers are greater-is-better (neg_mean_squared_error is "
            "the negated MSE), so the direction must be maximize; remove `direction`"
        )

    problems.extend(_objective_problems(raw))
    problems.extend(stop_rule_problems(raw))
    problems.extend(_dataset_problems(raw.get("dataset")))
    problems.extend(_search_problems(raw, space))
    problems.extend(_enqueue_problems(raw.get("enqueue"), raw_space, space))
    return problems


def _objective_problems(raw: Mapping[str, Any]) -> list[str]:
    """Problems of a ``scoring`` list, ``constraints`` and ``refit`` (``hpo.spec.objectives``)."""
    problems: list[str] = []
    scoring = raw.get("scoring")
    objectives = raw.get("objectives")
    extra: list[Any] = objectives if isinstance(objectives, list) else []
    names = [*(scoring if isinstance(scoring, list) else [scoring]), *extra]
    known = [*get_scorer_names(), *MEASURES]
    measures = ", ".join(MEASURES)
    if scoring == []:
        problems.append("scoring: an empty list; give a scikit-learn scorer, e.g. accuracy")
    elif isinstance(names[0], str) and names[0] in MEASURES:
        problems.append(
            f"scoring: {names[0]!r} is a measure of the net; the first objective must be a "
            f"scikit-learn scorer (the CV score), e.g. scoring: [accuracy, {names[0]}]"
        )
    for i, name in enumerate(names[1:], start=1):
        if not isinstance(name, str):
            problems.append(f"scoring[{i}]: must be a scorer or measure name, got {name!r}")
        elif name not in known:
            problems.append(
                f"scoring[{i}]: {name!r} is neither a scikit-learn scorer nor a measure of the "
                f"net ({measures}){did_you_mean(name, known)}"
            )
    repeated = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    if repeated:
        problems.append(f"scoring: {', '.join(repeated)} given twice; give each once")
    pruner = raw.get("pruner")
    pruner_name = pruner.get("name", "none") if isinstance(pruner, dict) else "none"
    if len(names) > 1 and pruner_name != "none":
        problems.append(
            f"pruner: {pruner_name} cannot stop a trial of several objectives (Optuna prunes "
            "single-objective studies only); use pruner: {name: none}, or one objective and "
            "the others as constraints"
        )
    constraints = raw.get("constraints")
    if isinstance(constraints, dict):
        for name, bound in constraints.items():
            if name not in known:
                problems.append(
                    f"constraints.{name}: neither a scikit-learn scorer nor a measure of the "
                    f"net ({measures}){did_you_mean(str(name), known)}"
                )
            if isinstance(bound, dict):
                low, high = bound.get("min"), bound.get("max")
                if low is None and high is None:
                    problems.append(f"constraints.{name}: give min, max or both")
                elif _is_number(low) and _is_number(high) and low > high:
                    problems.append(f"constraints.{name}: min {low} is above max {high}")
    refit = raw.get("refit")
    pick = refit.get("pick") if isinstance(refit, dict) else None
    if isinstance(pick, dict) and pick.get("best_first_within") and len(names) < 2:
        problems.append(
            "refit.pick: picks from the Pareto front of several objectives, and this study has "
            "one (scoring: [scorer, measure, ...] gives more)"
        )
    return problems


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _rule_for(key: Any, model: Any) -> Rule | None:
    """The rule ``key``'s values follow (``hpo.spec.rules``), or None when hpo knows none:
    ``module__*`` rules hold for the built-in models' own arguments only."""
    if not isinstance(key, str) or key not in RULES:
        return None
    if key.startswith("module__") and key.removeprefix("module__") not in MODELS.get(model, ()):
        return None
    return RULES[key]


def _rule_problems(model: Any, fixed: Mapping[str, Any], space: Mapping[str, Param]) -> list[str]:
    """``fixed`` values, categorical choices and numeric ranges that break their key's rule."""
    problems = []
    for key, value in fixed.items():
        rule = _rule_for(key, model)
        problem = rule and not _is_non_finite(value) and value_problem(rule, value)
        if problem:
            problems.append(f"fixed.{key}: {problem}")
    for key, param in space.items():
        rule = _rule_for(key, model)
        if rule is None:
            continue
        if isinstance(param, CategoricalParam):
            for choice in param.choices:
                problem = not _is_non_finite(choice) and value_problem(rule, choice)
                if problem:
                    problems.append(f"space.{key}: every choice {problem}")
                    break
            continue
        if isinstance(param, FloatParam) and rule.kind == "int":
            problems.append(f"space.{key}: must be {describe(rule)}; use type: int")
            continue
        for side, bound in (("low", param.low), ("high", param.high)):
            if _is_finite_number(bound) and not within(rule, bound):
                problems.append(
                    f"space.{key}.{side}: {bound!r} is out of range; {key} must be "
                    f"{describe(rule)}"
                )
    return problems


def _is_non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _reference_range_problems(name: str, param: Param, space: Mapping[str, Param]) -> list[str]:
    """A bound naming another parameter must hold for every value that one can take."""
    if isinstance(param, CategoricalParam):
        return []
    low, high = param.low, param.high
    if isinstance(high, str) and not isinstance(low, str):
        ref = space.get(high)
        ref_low = getattr(ref, "low", None)
        if isinstance(ref_low, int | float) and ref_low < low:
            return [
                f"space.{name}: `low <= high` must hold for every draw, but low={low} and "
                f"high={high} can be as low as {ref_low}; raise {high}'s low to {low} or "
                f"lower this low"
            ]
    if isinstance(low, str) and not isinstance(high, str):
        ref = space.get(low)
        ref_high = getattr(ref, "high", None)
        if isinstance(ref_high, int | float) and ref_high > high:
            return [
                f"space.{name}: `low <= high` must hold for every draw, but high={high} and "
                f"low={low} can be as high as {ref_high}; lower {low}'s high to {high} or "
                f"raise this high"
            ]
    return []


def _valid_params(raw_space: Mapping[str, Any]) -> dict[str, Param]:
    adapter: TypeAdapter[Param] = TypeAdapter(Param)
    space = {}
    for name, value in raw_space.items():
        try:
            space[name] = adapter.validate_python(value)
        except ValidationError:
            pass  # reported by the whole-spec validation
    return space


def _dataset_problems(dataset: Any) -> list[str]:
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str):
        return []
    name = dataset["name"]
    if name not in DATASETS:
        return [
            f"dataset.name: unknown dataset {name!r}{did_you_mean(name, DATASETS)} "
            f"(valid: {', '.join(DATASETS)})"
        ]
    options = DATASETS[name].options
    problems = [
        f"dataset.{key}: not an option of the {name} dataset{did_you_mean(key, options)} "
        f"(valid: {', '.join(sorted(options)) or 'none'})"
        for key in dataset
        if key != "name" and key not in options
    ]
    problems += [
        f"dataset.{key}: required by the {name} dataset; add it"
        for key in DATASETS[name].options
        if key in DATASETS[name].required and key not in dataset
    ]
    seed_problem = _seed_problem(dataset.get("seed")) if "seed" in options else None
    if seed_problem:
        problems.append(f"dataset.seed: {seed_problem}")
    return problems


def _search_problems(raw: Mapping[str, Any], space: Mapping[str, Param]) -> list[str]:
    problems = []
    sampler = _section(raw, "sampler")
    pruner = _section(raw, "pruner")
    budget = _section(raw, "budget")
    sampler_name = sampler.get("name", "tpe")
    one_configuration = (
        "to run one fixed configuration, keep its values under fixed: and write "
        "`sampler: {name: grid}` with `space: {}` (one point, scored once; see "
        "studies/mnist-mlp-fixed-sigmoid.yaml)"
    )
    if "space" not in raw:
        problems.append(
            "space: missing; give the parameters to search, e.g. space: {lr: {type: float, "
            f"low: 1.0e-4, high: 0.1, log: true}}, or, {one_configuration}"
        )
    elif raw.get("space") == {} and sampler_name != "grid":
        problems.append(
            f"space: empty, so the {sampler_name} sampler has nothing to search and would run "
            f"one configuration again and again; {one_configuration}"
        )
    if sampler_name == "grid":
        for name, param in space.items():
            error = grid_size_error(name, param)
            if error:
                problems.append(error)
    elif sampler_name in SAMPLER_NAMES and "trials" not in budget:
        problems.append(f"budget.trials: required for a {sampler_name} search (e.g. trials: 40)")
    for section, name, classes in (
        ("sampler", sampler_name, SAMPLERS),
        ("pruner", pruner.get("name", "none"), PRUNERS),
    ):
        options = (sampler if section == "sampler" else pruner).get("options") or {}
        if not isinstance(options, dict):
            continue
        if section == "sampler" and name == "auto" and options:
            problems.append(
                "sampler.options: auto picks its sampler by a rule (hpo/spec/sampling.py), so "
                "it takes no options; name the sampler (tpe, gp, ...) to give it options"
            )
            continue
        cls = classes.get(name)
        accepted = _constructor_args(cls) if cls is not None else ()
        objects = object_only_options(cls) if cls is not None else frozenset()
        for key in options:
            if key == "seed":
                problems.append(
                    f"{section}.options.seed: the seed goes in {section}.seed, not in options"
                )
            elif key in objects:
                problems.append(
                    f"{section}.options.{key}: takes a Python object, which a spec file cannot "
                    "give; leave it out"
                    + (f" (patient wraps a {PATIENT_WRAPS} pruner)" if name == "patient" else "")
                )
            elif key not in accepted:
                problems.append(
                    f"{section}.options.{key}: not an option of the {name} {section}"
                    f"{did_you_mean(key, accepted)} (valid: {', '.join(accepted) or 'none'})"
                )
    return problems


def _enqueue_problems(
    enqueue: Any, raw_space: Mapping[str, Any], space: Mapping[str, Param]
) -> list[str]:
    if not isinstance(enqueue, list):
        return []
    if len(enqueue) > MAX_GRID_POINTS:
        return [
            f"enqueue: {len(enqueue):,} points, more than the {MAX_GRID_POINTS:,} a study may "
            f"queue: {GRID_POINTS.why}"
        ]
    problems = []
    first_of: dict[tuple[Any, ...], int] = {}  # each point's first place in the list
    for i, point in enumerate(enqueue):
        if not isinstance(point, dict):
            continue
        for key, value in point.items():
            if _is_non_finite(value):
                continue  # reported by _non_finite_problems
            if key not in raw_space:
                problems.append(
                    f"enqueue[{i}].{key}: not a parameter in space{did_you_mean(key, raw_space)}"
                )
            elif isinstance(space.get(key), CategoricalParam):
                choices = space[key].choices  # type: ignore[union-attr]
                if not _is_choice(value, choices):
                    problems.append(f"enqueue[{i}].{key}: {value!r} is not one of {choices}")
            elif key in space:
                problems.extend(
                    _enqueued_range_problems(f"enqueue[{i}].{key}", space[key], value, point)
                )
        absent = absent_from(point, space)
        missing = [key for key in raw_space if key not in point and key not in absent]
        problems.extend(point_problems(f"enqueue[{i}]", point, space))
        if missing:
            problems.append(
                f"enqueue[{i}]: give a value for every parameter in space; "
                f"missing {', '.join(missing)}"
            )
        if all(map(_is_scalar, point.values())):
            first = first_of.setdefault(point_key(point), i)
            if first != i:
                problems.append(
                    f"enqueue[{i}]: the same point as enqueue[{first}], which would run twice; "
                    "give each point once"
                )
    return problems


def _is_choice(value: Any, choices: list[Any]) -> bool:
    """Whether ``value`` is one of ``choices`` both as Optuna finds a choice (``==``) and as a
    grid matches a warm start to its point (``value_key``: true is not the choice 1)."""
    return _is_scalar(value) and any(
        value == choice and value_key(value) == value_key(choice) for choice in choices
    )


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _enqueued_range_problems(
    where: str, param: Param, value: Any, point: Mapping[str, Any]
) -> list[str]:
    low = point.get(param.low) if isinstance(param.low, str) else param.low  # type: ignore[union-attr]
    high = point.get(param.high) if isinstance(param.high, str) else param.high  # type: ignore[union-attr]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return [f"{where}: {value!r} is not a number"]
    if isinstance(param, IntParam) and not float(value).is_integer():
        return [f"{where}: {value!r} is not an integer"]
    if isinstance(low, int | float) and isinstance(high, int | float) and not low <= value <= high:
        return [f"{where}: {value!r} is outside the range [{low}, {high}]"]
    return []


def _count(n: int) -> str:
    """``n`` for a message: 1,234,567 or, past a trillion, about 10^15."""
    return f"{n:,}" if n < 10**12 else f"about 10^{len(str(n)) - 1}"


def _grid_budget_problems(spec: StudySpec) -> list[str]:
    # Counted first, arithmetically: expanding a grid of 10**12 points would never finish.
    size = grid_size(spec.space)
    most = f"the {MAX_GRID_POINTS:,} a study may run: {GRID_POINTS.why}"
    fix = "coarsen the steps"
    cut = any(param.references() for param in spec.space.values())
    if size > MAX_GRID_POINTS and not cut:
        return [f"space: the grid has {_count(size)} points, more than {most}; {fix}"]
    if size > _MAX_GRID_WALK:
        return [
            f"space: the grid may have up to {_count(size)} points (a bound naming another "
            f"parameter counted at its widest), more than {most}; {fix}"
        ]
    # Small enough to walk: bounds naming other parameters cut points, so count them; a
    # warm start that is a grid point runs once.
    warm_starts = {point_key(point) for point in spec.enqueue}
    points = 0
    for point in expand_grid(spec.space):
        points += point_key(point) not in warm_starts
        if points > MAX_GRID_POINTS:
            return [f"space: the grid has more than {MAX_GRID_POINTS:,} points, {most}; {fix}"]
    total = points + len(spec.enqueue)
    if total > MAX_GRID_POINTS:
        return [
            f"space: the grid and enqueue: hold {total:,} points, more than {most}; {fix}, "
            "or queue fewer warm starts"
        ]
    if spec.budget.trials is not None and spec.budget.trials != total:
        return [
            f"budget.trials: a grid runs each of its {total} points once, but "
            f"trials={spec.budget.trials}; remove budget.trials"
        ]
    return []


def spec_json_equal(a: str, b: str) -> bool:
    """Whether two stored specs describe the same study: equal once read (a spec stored by
    an older hpo lacks the keys added since, which read as their defaults), else, when one
    cannot be read, equal as JSON (key order ignored)."""
    try:
        return bool(StudySpec.from_json(a) == StudySpec.from_json(b))
    except SpecError:
        return bool(json.loads(a) == json.loads(b))

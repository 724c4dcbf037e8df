"""Search spaces and algorithms: PyGlove's DNAGenerator propose/feedback, rebuilt from the trials' records.

A declared space becomes a `pg.Dict` of hyper values (log-scale ranges are searched as uniform floats over
the log of the range, so random and mutations are log-uniform); an experiment-declared space is the same
parameter list, as the trainer image described it (sweep/describe.py). Pure computation, no API I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyglove as pg

from pax_operator.sweep.spec import AlgorithmName, Parameter, ParameterType, PaxSweepSpec, float_override

ONEOF_INT_WIDTH = 1000  # int ranges up to this wide are a choice (finite: grid works); wider ones a float
MAX_CHOICES = 4096  # candidates of all choice parameters together (PyGlove builds ~1 ms of spec per one)
MAX_BOUND = 1e300  # |min|, |max| of a range: max - min stays finite (the CRD says the same)
DNA_TYPE = "pyglove.core.geno.base.DNA"  # pg.to_json_str's `_type` of a DNA (compact format)
MAX_DNA_DEPTH = 8  # nested decisions in a recorded DNA (a space of flat parameters has 1)
MAX_DNA_METADATA = 16  # entries of a recorded DNA's metadata (evolution writes 3)


class SpaceError(ValueError):
    """The search space or the algorithm cannot be used (the sweep fails with this message)."""


class AlgorithmError(SpaceError):
    """The algorithm raised: it computes from the records alone, so every retry would raise the same."""


@dataclass(frozen=True)
class Proposal:
    """One point: override text per hyperparameter (`--set`, which also fixes an experiment's own PyGlove
    hyper value); `dna` is the algorithm's own encoding (pg.to_json_str), recorded on the trial so the
    algorithm can be rebuilt."""

    dna: str
    params: dict[str, str]


def _choices(param: Parameter, finite: bool) -> int:
    """The parameter's candidates when searched as a choice (0: as a float); SpaceError when it has none."""
    if param.type is ParameterType.DISCRETE:
        return len(param.values)
    assert param.min is not None and param.max is not None, "the CRD requires min and max"
    if not (-MAX_BOUND <= param.min < param.max <= MAX_BOUND):
        raise SpaceError(
            f"parameter {param.name}: [{param.min:g}, {param.max:g}] is not a range within ±{MAX_BOUND:g}"
        )
    if param.type is not ParameterType.INT:
        return 0
    low, high = math.ceil(param.min), math.floor(param.max)
    if high < low:
        raise SpaceError(f"parameter {param.name}: no integer in [{param.min}, {param.max}]")
    return high - low + 1 if finite or (param.scale != "log" and high - low <= ONEOF_INT_WIDTH) else 0


def _hyper(param: Parameter, finite: bool) -> Any:
    if param.type is ParameterType.DISCRETE:
        return pg.oneof(list(param.values))
    assert param.min is not None and param.max is not None, "the CRD requires min and max"
    log = param.scale == "log"
    if param.type is ParameterType.INT:
        low, high = math.ceil(param.min), math.floor(param.max)
        if _choices(param, finite):
            return pg.oneof(list(range(low, high + 1)))
        if log:  # min > 0 (the CRD says so), hence low >= 1
            return pg.floatv(math.log(low - 0.5), math.log(high + 0.5))
        return pg.floatv(low - 0.5, high + 0.5)
    return pg.floatv(math.log(param.min), math.log(param.max)) if log else pg.floatv(param.min, param.max)


def _decode(param: Parameter, encoded: Any) -> str:
    if param.type is ParameterType.DISCRETE:
        return str(encoded)
    log = param.scale == "log"
    if param.type is ParameterType.INT:
        if isinstance(encoded, int):
            return str(encoded)
        assert param.min is not None and param.max is not None
        value = round(math.exp(encoded)) if log else round(encoded)
        return str(min(max(value, math.ceil(param.min)), math.floor(param.max)))
    assert param.min is not None and param.max is not None
    return float_override(math.exp(encoded) if log else float(encoded), param.min, param.max)


def is_point(parameters: list[Parameter], values: dict[str, str]) -> bool:
    """Whether a trial's recorded override values are a point of the space: every parameter and no other,
    a listed discrete value, a number within [min, max] (an int for int). A hand-edited record may not be."""
    if set(values) != {p.name for p in parameters}:
        return False
    for param in parameters:
        text = values[param.name]
        if param.type is ParameterType.DISCRETE:
            if text not in param.values:
                return False
            continue
        assert param.min is not None and param.max is not None, "the CRD requires min and max"
        try:
            number = float(text) if param.type is ParameterType.FLOAT else int(text)
        except ValueError:
            return False
        if not (math.isfinite(number) and param.min <= number <= param.max):
            return False
    return True


def dna_value(encoded: str) -> tuple[Any, dict[str, Any]]:
    """The decisions and metadata of a recorded DNA, read from PyGlove's compact JSON form here, never by
    pg.from_json_str: that builds any registered type and unpickles opaque objects, and the record is an
    annotation anyone who may edit the trial PaxJob can write. Metadata (evolution's proposal and
    generation ids) is kept when it is flat: names to numbers, text, booleans or null. ValueError when it is
    not that form."""

    def check(value: Any, depth: int) -> None:
        if isinstance(value, list) and depth < MAX_DNA_DEPTH:
            for item in value:
                check(item, depth + 1)
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"not a DNA decision: {str(value)[:64]}")

    try:
        doc = json.loads(encoded)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"not a DNA: {err}") from None
    compact = {"_type": DNA_TYPE, "format": "compact"}
    if not isinstance(doc, dict) or doc.get("_type") != DNA_TYPE or doc.get("format") != "compact":
        raise ValueError(f"not a DNA in PyGlove's compact form: {encoded[:64]}")
    metadata = doc.get("metadata", {})
    if set(doc) - {*compact, "value", "metadata"} or not _flat_metadata(metadata):
        raise ValueError(f"not a DNA in PyGlove's compact form: {encoded[:64]}")
    check(doc.get("value"), 0)
    return doc["value"], metadata


def _flat_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= MAX_DNA_METADATA
        and all(
            isinstance(value, str | int | float | bool | None)
            and not (isinstance(value, float) and not math.isfinite(value))
            for value in metadata.values()
        )
    )


def is_dna(encoded: str) -> bool:
    try:
        dna_value(encoded)
    except ValueError:
        return False
    return True


class SearchSpace:
    """Maps DNA ↔ trial hyperparameters."""

    def __init__(self, spec: PaxSweepSpec, parameters: list[Parameter] | None = None) -> None:
        """`parameters`: the experiment's discovered space (describe.sweep_parameters); else the declared."""
        self.parameters = list(spec.parameters if parameters is None else parameters)
        finite = spec.algorithm.name is AlgorithmName.GRID
        if not self.parameters:
            raise SpaceError("the search space has no parameters")
        choices = sum(_choices(p, finite) for p in self.parameters)
        if choices > MAX_CHOICES:
            raise SpaceError(
                f"the search space has {choices} choices in all, more than {MAX_CHOICES} (discrete values "
                f"and int values: every int of a grid, else of linear ranges ≤ {ONEOF_INT_WIDTH} wide)"
            )
        self.space = pg.Dict({p.name: _hyper(p, finite) for p in self.parameters})
        self.dna_spec = pg.dna_spec(self.space)
        if finite and self.size is None:
            raise SpaceError("the grid algorithm needs a finite search space")

    @property
    def size(self) -> int | None:
        """Number of distinct points when finite, else None."""
        size = self.dna_spec.space_size
        return None if size is None or size < 0 else int(size)

    def proposal(self, dna: pg.DNA) -> Proposal:
        encoded = pg.to_json_str(dna)
        values = pg.materialize(self.space, dna)
        return Proposal(dna=encoded, params={p.name: _decode(p, values[p.name]) for p in self.parameters})

    def dna(self, encoded: str) -> pg.DNA:
        """A recorded DNA as a point of this space; ValueError when it is not one."""
        value, metadata = dna_value(encoded)
        try:
            dna = pg.DNA.parse(value)
            for key, item in metadata.items():
                dna.set_metadata(key, item)
            dna.use_spec(self.dna_spec)
        except ValueError:
            raise
        except Exception as err:  # PyGlove's other errors for decisions that do not fit the space
            raise ValueError(f"the DNA {encoded[:64]} is not a point of this space: {err}") from err
        return dna


def make_generator(spec: PaxSweepSpec) -> pg.DNAGenerator:
    algorithm = spec.algorithm
    if algorithm.name is AlgorithmName.RANDOM:
        return pg.geno.Random(seed=algorithm.seed)
    if algorithm.name is AlgorithmName.GRID:
        return pg.geno.Sweeping()
    if algorithm.name is AlgorithmName.REGULARIZED_EVOLUTION:
        return pg.evolution.regularized_evolution(
            # the default mutator draws from the global random state: seed it too, or runs differ
            mutator=pg.evolution.mutators.Uniform(seed=algorithm.seed),
            population_size=algorithm.population_size,
            tournament_size=algorithm.tournament_size,
            seed=algorithm.seed,
        )
    raise SpaceError(f"algorithm {algorithm.name} is not available in this operator")


@dataclass(frozen=True)
class Record:
    """What a trial's annotations say about its place in the algorithm's history."""

    index: int
    dna: str
    after: int  # feedbacks the algorithm had received when it proposed this trial
    seq: int | None = None  # this trial's feedback number, once fed back
    reward: float | None = None  # None: infeasible (failed)
    credited: bool = True  # False: its seq is taken, but the algorithm is not told (it ran other values)


class Search:
    """A DNAGenerator plus its history: replaying the records gives the state an uninterrupted run had."""

    def __init__(self, spec: PaxSweepSpec, parameters: list[Parameter] | None = None) -> None:
        self.space = SearchSpace(spec, parameters)
        self.generator = make_generator(spec)
        self.generator.setup(self.space.dna_spec)
        self.proposed = 0
        self.fed = 0  # feedbacks given; after a replay, the next feedback's seq
        self.exhausted = False
        self.diverged = 0  # replayed proposals that differ from the recorded ones (should stay 0)

    def propose(self) -> Proposal | None:
        """The next point, or None when a finite space is exhausted."""
        dna = self._next_dna()
        return None if dna is None else self.space.proposal(dna)

    def _next_dna(self) -> pg.DNA | None:
        """The generator's next DNA (not materialized: half a proposal's cost, and a replay needs only the
        DNA), or None when a finite space is exhausted."""
        if self.exhausted:
            return None
        try:
            dna = self.generator.propose()
        except StopIteration:
            self.exhausted = True
            return None
        except ValueError as err:  # PyGlove could not draw a point of this space
            raise SpaceError(f"the algorithm could not propose a point: {err}") from err
        except Exception as err:  # the algorithm's own failure: the sweep fails with it (not every pass)
            raise AlgorithmError(f"the algorithm failed to propose: {type(err).__name__}: {err}") from err
        dna.use_spec(self.space.dna_spec)
        self.proposed += 1
        return dna

    def feedback(self, encoded_dna: str, reward: float | None) -> None:
        """Tell the algorithm how a trial did; None (failed, infeasible) ranks below everything."""
        dna = self.space.dna(encoded_dna)
        try:
            self.generator.feedback(dna, -math.inf if reward is None else reward)
        except Exception as err:  # the algorithm's own failure: the sweep fails with it (not every pass)
            raise AlgorithmError(f"the algorithm failed on feedback: {type(err).__name__}: {err}") from err
        self.fed += 1

    def skip_feedback(self) -> None:
        """A result the algorithm is not told of (no DNA, or not credited) still takes its feedback number."""
        self.fed += 1

    def replay(self, records: Iterable[Record], issued: int = 0, fed_seq: int = 0) -> None:
        """Rebuild from trial records: proposals in index order, each after the feedbacks it had seen.

        `issued`, `fed_seq`: the sweep's high-water marks (trial indices used, next feedback seq). A deleted
        trial leaves a gap: its point is proposed again and dropped, so later indices line up. A record
        without DNA (a malformed annotation) or not credited is not fed back."""
        ordered = sorted(records, key=lambda r: r.index)
        by_index = {r.index: r for r in ordered}
        fed = sorted(
            (r for r in ordered if r.seq is not None and r.dna and r.credited), key=lambda r: r.seq or 0
        )
        position = 0
        total = max(issued, ordered[-1].index + 1 if ordered else 0)
        for index in range(total):
            record = by_index.get(index)
            if record is None:
                self._next_dna()
                continue
            while position < len(fed) and (fed[position].seq or 0) < record.after:
                self.feedback(fed[position].dna, fed[position].reward)
                position += 1
            dna = self._next_dna()
            if dna is None or pg.to_json_str(dna) != record.dna:
                self.diverged += 1
                self.exhausted = False
        for record in fed[position:]:
            self.feedback(record.dna, record.reward)
        self.proposed = total
        self.fed = max(self.fed, fed_seq)


def encode_record(proposal: Proposal, after: int) -> str:
    doc: dict[str, Any] = {"dna": proposal.dna, "after": after, "params": proposal.params}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))

"""A training run's identity: the ``run`` entry its checkpoints record, read in either schema and compared.

:func:`spknet.training.run.run_identity` writes the entry (schema 2): ``{"schema": 2, "model": ModelSpec fields,
"options": the other fields a resume may not change, "lists": SHA-256 of each list's contents}``. Schema 1 (no
``schema`` key) kept the command line's flags flat in ``options``. :func:`run_differences` is the one comparison of
two entries: a resume (:class:`~spknet.training.run.RunMismatch`) and averaging
(:func:`spknet.checkpoints.average_checkpoints`) both use it, and :meth:`RunDifference.words` says each difference.
"""

from typing import NamedTuple

from spknet.specs import FLAG_NAMES, MODEL_FIELDS, ModelSpec, flag_name

# schema 1 kept the command line's names: the field of each flag named otherwise
LEGACY_NAMES = {flag: field for field, flag in FLAG_NAMES.items()}
# compared by content: a list moved elsewhere with the same contents is the same list
RUN_LISTS = ("train_list", "test_list", "val_list", "train_data")


class Sides(NamedTuple):
    """How a message names the two runs: ``first``/``second`` format a value of each, ``lists`` says that a list's
    contents differ."""
    first: str
    second: str
    lists: str

    @classmethod
    def files(cls, first: str, second: str) -> "Sides":
        """Two checkpoints, named by their files: ``hann in model000000001.model``."""
        escaped = [name.replace("{", "{{").replace("}", "}}") for name in (first, second)]
        return cls(f"{{}} in {escaped[0]}", f"{{}} in {escaped[1]}", f"other contents in {second} than in {first}")


RESUMED = Sides("saved {}", "given {}", "other contents than the saved run's list")


class RunDifference(NamedTuple):
    """A field in which two runs differ, and its value in each (None, None for a list: compared by content)."""
    field: str
    first: object
    second: object

    def words(self, sides: Sides = RESUMED) -> str:
        """``--nOut: saved 16, given 32``."""
        values = sides.lists if self.field in RUN_LISTS else \
            f"{sides.first.format(self.first)}, {sides.second.format(self.second)}"
        return f"{flag_name(self.field)}: {values}"


def identity_fields(run: dict) -> dict:
    """A ``run`` entry of either schema as one mapping of field names to values: the options under their schema-2
    names, then the model spec as :meth:`~spknet.specs.ModelSpec.from_record` reads it (so schema 1's flat model
    options, and the defaults of those it predates, read as schema 2 records them)."""
    options = {LEGACY_NAMES.get(key, key): value for key, value in (run.get("options") or {}).items()}
    model = ModelSpec.from_record(run)
    if model is None:               # no model named: compare what the entry holds
        return {**options, **(run.get("model") or {})}
    return {**{key: value for key, value in options.items() if key not in MODEL_FIELDS}, **model.record()}


def run_differences(first: dict, second: dict) -> list[RunDifference]:
    """Every field that both entries record and in which they differ, in ``second``'s order, lists last. A field
    only one records is not a difference: the code that wrote the other had no such option (or, for ``max_epoch``,
    a schedule that does not depend on it)."""
    own, other = identity_fields(first), identity_fields(second)
    differences = [RunDifference(key, own[key], value) for key, value in other.items()
                   if key in own and own[key] != value]
    own_lists = first.get("lists") or {}
    return differences + [RunDifference(key, None, None) for key, digest in (second.get("lists") or {}).items()
                          if key in own_lists and own_lists[key] != digest]

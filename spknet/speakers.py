"""Enrolled speakers and open-set identification: "who is speaking in this file, if anybody we know?".

A :class:`SpeakerDB` is a SQLite file (the standard library's, in WAL mode) that holds, for one model, each
enrolled speaker's files with their embeddings and the speaker's mean, the threshold below which an answer is
``unknown``, and optionally a cohort for AS-norm. Every change is one transaction: two processes enrolling at once
both land, and a process killed mid-way leaves the database as it was before its enrolment started.

Scores are ``--eval``'s cosine scoring (:func:`~spknet.evaluation.scoring.mean_embeddings`: each file's crops
normalised as the loss says, averaged, normalised): a speaker enrolled from one file scores a test file exactly
as ``inference.py verify --scoring cosine`` scores the pair. A speaker of several files is the normalised mean of
their file embeddings, so identification against any number of speakers is one matrix product.
"""

import hashlib
import json
import math
import os
import sqlite3
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from spknet.calibration import scoring_options
from spknet.errors import SpeakerNetError
from spknet.evaluation.scoring import mean_embeddings, top_cohort_statistics

SCHEMA = 1
UNKNOWN = "unknown"             # the answer below the threshold: no enrolled speaker may take the name
SCORE_NORMS = ("none", "asnorm")
BUSY_TIMEOUT_S = 120            # another process's transaction is waited for, not an error

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, mean BLOB NOT NULL, files INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, speaker INTEGER NOT NULL REFERENCES speakers(id) ON DELETE CASCADE,
    path TEXT NOT NULL, embedding BLOB NOT NULL, UNIQUE (speaker, path));
CREATE TABLE IF NOT EXISTS cohort (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, mean BLOB NOT NULL);
"""


@dataclass(frozen=True)
class Candidate:
    speaker: str
    score: float
    llr: float | None = None


@dataclass(frozen=True)
class Identification:
    """One file's answer: the top candidates, best first, and the threshold the best one had to pass."""
    file: str
    candidates: list[Candidate]
    threshold: float | None

    @property
    def speaker(self) -> str:
        """The best candidate, or ``unknown`` when there is none or its score is not above the threshold."""
        if not self.candidates:
            return UNKNOWN
        best = self.candidates[0]
        return best.speaker if self.threshold is None or best.score > self.threshold else UNKNOWN


@dataclass(frozen=True)
class Threshold:
    value: float
    far: float | None = None        # the false-alarm rate it was set for, on ``source``'s non-target trials
    source: str = ""
    miss: float | None = None       # the miss rate at it, on the same trials
    score_norm: str = "none"        # the scores it is in: a threshold of AS-norm scores means nothing to cosine ones
    # AS-norm's scores move with the cohort and how many of its speakers each side keeps: the threshold holds for
    # those it was set with (None: not recorded, as in databases from before they were)
    cohort_size: int | None = None
    cohort: str | None = None       # the digest of the cohort's means (SpeakerDB.cohort_digest)

    def describe(self) -> str:
        if self.far is None:
            return f"{self.value:.4f} (given)"
        return (f"{self.value:.4f} (false alarms {self.far:g} on {self.source}, where it misses "
                f"{100 * self.miss:.2f} % of target trials)")


@dataclass(frozen=True)
class IdentificationMetrics:
    known_files: int
    impostor_files: int
    top1: float                     # closed set: the best candidate is the file's speaker
    dir_at_far: float               # open set: top-1 right and above the threshold
    far: float
    threshold: float

    def summary(self) -> str:
        return (f"closed-set top-1 {100 * self.top1:.2f} % ({self.known_files} files of enrolled speakers); "
                f"open-set DIR {100 * self.dir_at_far:.2f} % at {100 * self.far:g} % false alarms "
                f"({self.impostor_files} impostor files, threshold {self.threshold:.4f})")


def _blob(vector: torch.Tensor) -> bytes:
    return vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def threshold_at_far(non_target: np.ndarray, far: float) -> float:
    """The smallest score whose acceptance (score strictly above it) lets at most ``far`` of the non-target
    scores through: the ``floor(far * n) + 1``-th highest of them."""
    if not 0 < far < 1:
        raise SpeakerNetError(f"false-alarm rate {far}: strictly between 0 and 1")
    if len(non_target) == 0:
        raise SpeakerNetError("a threshold at a false-alarm rate needs non-target scores, and there are none")
    ranked = np.sort(np.asarray(non_target, dtype=np.float64))[::-1]
    return float(ranked[min(int(math.floor(far * len(ranked))), len(ranked) - 1)])


class SpeakerDB:
    """The speakers enrolled with one model. ``embedder`` (:func:`~spknet.inference.load_embedder`) is needed to
    enrol and identify, and the database must have been made with its weights and options; listing, removing and
    renaming need none. ``create``: make the file when it does not exist (otherwise a missing file is an error).
    ``dtype``: the precision of the speaker matrix searched (float16 halves its memory)."""

    def __init__(self, path: str, embedder=None, create: bool = False, dtype: torch.dtype = torch.float32,
                 calibration=None):
        self.path, self.embedder, self.dtype, self.calibration = str(path), embedder, dtype, calibration
        if not create and not os.path.isfile(self.path):
            raise SpeakerNetError(f"{self.path}: no such speaker database (enrol speakers into it first)")
        self._connection = self._connect(create)
        self._matrix_version = None
        self._names: list[str] = []
        self._means = torch.empty(0)
        if embedder is not None:
            self._check_model()

    # ------------------------------------------------------------------------------------------------------------
    # The file, its schema and its model
    # ------------------------------------------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        try:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA foreign_keys=ON")
            schema = self._read_schema(connection)
            if schema is None:
                if not create:
                    raise SpeakerNetError(f"{self.path}: not a SpeakerNet speaker database (no schema recorded)")
                with _transaction(connection):
                    _create(connection)
            elif schema > SCHEMA:
                raise SpeakerNetError(f"{self.path}: speaker database schema {schema}, newer than this "
                                      f"SpeakerNet's {SCHEMA}: update SpeakerNet to read it")
        except sqlite3.DatabaseError as error:
            raise SpeakerNetError(f"{self.path}: not a readable speaker database ({error})") from None
        return connection

    @staticmethod
    def _read_schema(connection: sqlite3.Connection) -> int | None:
        exists = connection.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not exists:
            return None
        row = connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        return int(row[0]) if row else None

    def close(self) -> None:
        self._connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _meta(self, key: str):
        row = self._execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def _set_meta(self, key: str, value) -> None:
        self._connection.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def _execute(self, sql: str, parameters=()):
        try:
            return self._connection.execute(sql, parameters)
        except sqlite3.DatabaseError as error:
            raise SpeakerNetError(f"{self.path}: speaker database cannot be read ({error})") from None

    def model_identity(self) -> dict:
        """What the embedder's scores depend on: its weights, its spec and how files are embedded."""
        embedder = self._need_embedder("this")
        return {"weights_sha256": embedder.weights_sha256(), "model": embedder.config,
                "eval_frames": embedder.eval_frames, "test_normalize": embedder.test_normalize,
                "source": embedder.source}

    def _check_model(self) -> None:
        """Record the model in a new database; refuse another model's database in one line naming both."""
        mine = self.model_identity()
        with _transaction(self._connection):
            recorded = self._meta("model")
            if recorded is None:
                self._set_meta("model", mine)
                return
        same = all(recorded.get(key) == mine[key] for key in ("weights_sha256", "model", "eval_frames",
                                                              "test_normalize"))
        if not same:
            raise SpeakerNetError(
                f"{self.path}: made with model {recorded.get('source') or '?'} (weights "
                f"{recorded.get('weights_sha256', '?')[:12]}, {_spec_words(recorded)}), not with "
                f"{mine['source'] or 'this model'} (weights {mine['weights_sha256'][:12]}, {_spec_words(mine)}): "
                f"enrol into another database, or use the model it was made with")

    def _need_embedder(self, action: str):
        if self.embedder is None:
            raise SpeakerNetError(f"{self.path}: {action} needs the model (--initial_model)")
        return self.embedder

    # ------------------------------------------------------------------------------------------------------------
    # Enrolment and its management
    # ------------------------------------------------------------------------------------------------------------

    def embed(self, files: list[str]) -> torch.Tensor:
        """``(files, dim)`` file embeddings as the cosine scoring of ``--eval`` makes them (normalised)."""
        embedder = self._need_embedder("embedding files")
        embeddings = embedder.embed_files(list(files))
        return mean_embeddings(torch.stack(embeddings).float(), embedder.test_normalize)

    def enroll(self, speaker: str, files: list[str]) -> int:
        """Add ``files`` to ``speaker`` (a new speaker, or one enrolled before: a file enrolled again replaces its
        embedding) and recompute the speaker's mean; returns the speaker's file count. Every file is embedded
        before the database is touched, so a file that cannot be read changes nothing."""
        return self.enroll_many({speaker: list(files)})[speaker]

    def enroll_many(self, files_by_speaker: dict[str, list[str]]) -> dict[str, int]:
        """:meth:`enroll` for several speakers in one transaction (``--list``)."""
        for speaker, files in files_by_speaker.items():
            _check_name(speaker)
            if not files:
                raise SpeakerNetError(f"speaker {speaker!r}: no files to enrol")
        paths = [path for files in files_by_speaker.values() for path in files]
        return self.enroll_embeddings(files_by_speaker, self.embed(paths))

    def enroll_embeddings(self, files_by_speaker: dict[str, list[str]], vectors: torch.Tensor) -> dict[str, int]:
        """:meth:`enroll_many` with the files' embeddings given (``vectors``: :meth:`embed`'s rows, the files in
        the order of ``files_by_speaker``), e.g. embedded elsewhere; one transaction."""
        for speaker in files_by_speaker:
            _check_name(speaker)
        if sum(len(files) for files in files_by_speaker.values()) != len(vectors):
            raise SpeakerNetError(f"{len(vectors)} embeddings for "
                                  f"{sum(len(files) for files in files_by_speaker.values())} files")
        rows = iter(vectors)
        counts = {}
        with _transaction(self._connection):
            for speaker, files in files_by_speaker.items():
                self._connection.execute("INSERT OR IGNORE INTO speakers(name, mean, files) VALUES (?, ?, 0)",
                                         (speaker, b""))
                (speaker_id,) = self._connection.execute("SELECT id FROM speakers WHERE name=?",
                                                         (speaker,)).fetchone()
                self._connection.executemany(
                    "INSERT OR REPLACE INTO files(speaker, path, embedding) VALUES (?, ?, ?)",
                    [(speaker_id, os.path.abspath(path), _blob(next(rows))) for path in files])
                counts[speaker] = self._update_mean(speaker_id)
        return counts

    def _update_mean(self, speaker_id: int) -> int:
        rows = self._connection.execute("SELECT embedding FROM files WHERE speaker=?", (speaker_id,)).fetchall()
        mean = F.normalize(torch.from_numpy(np.stack([_vector(blob) for (blob,) in rows])).mean(dim=0), dim=0)
        self._connection.execute("UPDATE speakers SET mean=?, files=? WHERE id=?", (_blob(mean), len(rows), speaker_id))
        return len(rows)

    def speakers(self) -> list[tuple[str, int]]:
        """``(name, files)`` of every enrolled speaker, by name."""
        return [tuple(row) for row in self._execute("SELECT name, files FROM speakers ORDER BY name")]

    def files(self, speaker: str) -> list[str]:
        self._speaker_id(speaker)
        rows = self._execute("SELECT f.path FROM files f JOIN speakers s ON f.speaker = s.id WHERE s.name=? "
                             "ORDER BY f.path", (speaker,))
        return [path for (path,) in rows]

    def _speaker_id(self, speaker: str) -> int:
        row = self._execute("SELECT id FROM speakers WHERE name=?", (speaker,)).fetchone()
        if row is None:
            known = self.speakers()
            hint = f"; enrolled: {', '.join(name for name, _ in known[:10])}" if known else "; none is enrolled"
            raise SpeakerNetError(f"{self.path}: no speaker named {speaker!r}{hint}")
        return row[0]

    def remove(self, speaker: str) -> None:
        with _transaction(self._connection):
            self._connection.execute("DELETE FROM speakers WHERE id=?", (self._speaker_id(speaker),))

    def rename(self, old: str, new: str) -> None:
        _check_name(new)
        with _transaction(self._connection):
            speaker_id = self._speaker_id(old)
            if self._connection.execute("SELECT 1 FROM speakers WHERE name=?", (new,)).fetchone():
                raise SpeakerNetError(f"{self.path}: a speaker named {new!r} is enrolled already")
            self._connection.execute("UPDATE speakers SET name=? WHERE id=?", (new, speaker_id))

    # ------------------------------------------------------------------------------------------------------------
    # Scoring: cosine, or AS-norm against the stored cohort
    # ------------------------------------------------------------------------------------------------------------

    def set_cohort(self, files_by_speaker: dict[str, list[str]]) -> int:
        """Replace the AS-norm cohort with these speakers' means (their files embedded as for enrolment)."""
        paths = [path for files in files_by_speaker.values() for path in files]
        vectors = self.embed(paths)
        start, means = 0, []
        for files in files_by_speaker.values():
            means.append(F.normalize(vectors[start:start + len(files)].mean(dim=0), dim=0))
            start += len(files)
        with _transaction(self._connection):
            self._connection.execute("DELETE FROM cohort")
            self._connection.executemany("INSERT INTO cohort(name, mean) VALUES (?, ?)",
                                         [(name, _blob(mean)) for name, mean in zip(files_by_speaker, means)])
        return len(means)

    def cohort(self) -> torch.Tensor:
        rows = self._execute("SELECT mean FROM cohort ORDER BY id").fetchall()
        if not rows:
            return torch.empty(0)
        return torch.from_numpy(np.stack([_vector(blob) for (blob,) in rows]))

    def cohort_digest(self) -> str:
        """SHA-256 of the cohort's means, in their order: what an AS-norm threshold was set against."""
        digest = hashlib.sha256()
        for (blob,) in self._execute("SELECT mean FROM cohort ORDER BY id"):
            digest.update(blob)
        return digest.hexdigest()

    def scoring(self, score_norm: str = "none", cohort_size: int = 200) -> "Scorer":
        """The scorer of this database's speakers (see :class:`Scorer`)."""
        if score_norm not in SCORE_NORMS:
            raise SpeakerNetError(f"score normalisation {score_norm!r}: choose one of {', '.join(SCORE_NORMS)}")
        cohort = None
        if score_norm == "asnorm":
            cohort = self.cohort()
            if cohort.shape[0] < 2:
                raise SpeakerNetError(f"{self.path}: AS-norm needs a cohort of 2 speakers or more in the database "
                                      f"(inference.py enroll --cohort --list ...); it holds {cohort.shape[0]}")
        return Scorer(cohort, cohort_size)

    def matrix(self) -> tuple[list[str], torch.Tensor]:
        """The enrolled speakers' names and their ``(speakers, dim)`` mean matrix in ``dtype``, read once and read
        again only after another connection or this one changed the database."""
        version = (self._execute("PRAGMA data_version").fetchone()[0], self._connection.total_changes)
        if version != self._matrix_version:
            rows = self._execute("SELECT name, mean FROM speakers ORDER BY id").fetchall()
            self._names = [name for name, _ in rows]
            blobs = b"".join(blob for _, blob in rows)
            self._means = torch.from_numpy(np.frombuffer(blobs, dtype=np.float32).copy()).view(len(rows), -1) \
                if rows else torch.empty(0, 0)
            self._means = self._means.to(self.dtype)
            self._matrix_version = version
        return self._names, self._means

    # ------------------------------------------------------------------------------------------------------------
    # Thresholds and identification
    # ------------------------------------------------------------------------------------------------------------

    def threshold(self) -> Threshold | None:
        value = self._meta("threshold")
        return Threshold(**value) if value else None

    def set_threshold(self, threshold: Threshold) -> None:
        with _transaction(self._connection):
            self._set_meta("threshold", threshold.__dict__)

    def threshold_from_trials(self, enroll: list[str], test: list[str], labels, far: float, source: str,
                              score_norm: str = "none", cohort_size: int = 200) -> Threshold:
        """The threshold whose false-alarm rate on the non-target trials ``(enroll[i], test[i])`` is ``far``, each
        enrolment file scored as a speaker enrolled from it alone; stored in the database."""
        unique = list(dict.fromkeys([*enroll, *test]))
        index = {path: i for i, path in enumerate(unique)}
        vectors = self.embed(unique)
        scorer = self.scoring(score_norm, cohort_size)
        e = vectors[[index[path] for path in enroll]]
        t = vectors[[index[path] for path in test]]
        scores = scorer.pairs(e, t).numpy()
        labels = np.asarray(labels, dtype=bool)
        if labels.all() or not labels.any():
            raise SpeakerNetError(f"{source}: a threshold needs both target and non-target trials")
        value = threshold_at_far(scores[~labels], far)
        threshold = Threshold(value, far, source, float(np.mean(scores[labels] <= value)), score_norm,
                              **self.cohort_record(score_norm, cohort_size))
        self.set_threshold(threshold)
        return threshold

    def cohort_record(self, score_norm: str, cohort_size: int) -> dict:
        """What a threshold of ``score_norm`` scores holds for: with AS-norm, the cohort and its size used."""
        if score_norm != "asnorm":
            return {}
        return {"cohort_size": cohort_size, "cohort": self.cohort_digest()}

    def stored_threshold(self, score_norm: str, cohort_size: int) -> float | None:
        """The database's threshold, when it was set for these scores; an error naming what differs otherwise."""
        stored = self.threshold()
        if stored is None:
            return None
        words = {"none": "plain cosine", "asnorm": "AS-norm"}
        advice = "or set a threshold for these scores (--far or --threshold)"
        if stored.score_norm != score_norm:
            raise SpeakerNetError(f"{self.path}: its threshold was set on {words[stored.score_norm]} scores, and "
                                  f"these are {words[score_norm]} ones: identify with --score_norm "
                                  f"{stored.score_norm}, {advice}")
        if score_norm == "asnorm" and stored.cohort_size not in (None, cohort_size):
            raise SpeakerNetError(f"{self.path}: its threshold was set on AS-norm scores over the top "
                                  f"{stored.cohort_size} cohort speakers, and these use {cohort_size}: identify with "
                                  f"--cohort_size {stored.cohort_size}, {advice}")
        if score_norm == "asnorm" and stored.cohort not in (None, self.cohort_digest()):
            raise SpeakerNetError(f"{self.path}: its cohort was replaced after its AS-norm threshold was set: the "
                                  f"threshold does not hold for the new cohort's scores; {advice}")
        return stored.value

    def identify(self, files: list[str], top_k: int = 5, threshold: float | None = None, score_norm: str = "none",
                 cohort_size: int = 200) -> list[Identification]:
        """Each file's ``top_k`` enrolled speakers by score (LLRs too when the database was opened with a
        calibration for this scoring), and the threshold (``threshold``, else the database's, else none)."""
        return self.identify_vectors(list(files), self.embed(list(files)), top_k, threshold, score_norm, cohort_size)

    def identify_vectors(self, names: list[str], vectors: torch.Tensor, top_k: int = 5,
                         threshold: float | None = None, score_norm: str = "none",
                         cohort_size: int = 200) -> list[Identification]:
        speakers, means = self.matrix()
        if not speakers:
            raise SpeakerNetError(f"{self.path}: no speaker is enrolled")
        if threshold is None:
            threshold = self.stored_threshold(score_norm, cohort_size)
        scores = self.scoring(score_norm, cohort_size).against(vectors, means)
        top = torch.topk(scores, min(top_k, len(speakers)), dim=1)
        calibration = self._calibration(score_norm, cohort_size)
        answers = []
        for name, values, indices in zip(names, top.values.tolist(), top.indices.tolist()):
            llrs = calibration.llr(np.asarray(values)).tolist() if calibration is not None else [None] * len(values)
            candidates = [Candidate(speakers[i], score, llr) for i, score, llr in zip(indices, values, llrs)]
            answers.append(Identification(name, candidates, threshold))
        return answers

    def _calibration(self, score_norm: str, cohort_size: int):
        """``calibration`` when it was made for the scores identification gives (this model, cosine scoring, this
        score normalisation), else None."""
        embedder = self.embedder
        if embedder is None or self.calibration is None:
            return None
        options = scoring_options(embedder.eval_frames, "cosine", score_norm, embedder.test_normalize,
                                  embedder.pipeline.scale, embedder.pipeline.pad)
        try:
            self.calibration.check(embedder.weights_sha256(), options)
        except SpeakerNetError:
            return None
        return self.calibration

    def evaluate(self, labelled: list[tuple[str, str]], far: float = 0.01, score_norm: str = "none",
                 cohort_size: int = 200) -> IdentificationMetrics:
        """Closed-set top-1 over the files of enrolled speakers, and the open-set detection-and-identification
        rate at ``far`` false alarms with the files of the other speakers as impostors (``labelled``: ``(speaker,
        file)`` pairs)."""
        vectors = self.embed([path for _, path in labelled])
        return self.evaluate_vectors([speaker for speaker, _ in labelled], vectors, far, score_norm, cohort_size)

    def evaluate_vectors(self, labels: list[str], vectors: torch.Tensor, far: float = 0.01,
                         score_norm: str = "none", cohort_size: int = 200) -> IdentificationMetrics:
        """:meth:`evaluate` of file embeddings ``vectors`` (as :meth:`embed` gives them) of speakers ``labels``."""
        speakers, means = self.matrix()
        if not speakers:
            raise SpeakerNetError(f"{self.path}: no speaker is enrolled")
        enrolled = set(speakers)
        known = np.array([label in enrolled for label in labels])
        if not known.any() or known.all():
            raise SpeakerNetError("identification needs test files of enrolled speakers and of other speakers "
                                  "(the impostors)")
        best, index = self.scoring(score_norm, cohort_size).against(vectors, means).max(dim=1)
        right = np.array([speakers[i] == label for i, label in zip(index.tolist(), labels)])
        best = best.numpy()
        threshold = threshold_at_far(best[~known], far)
        detected = right & (best > threshold)
        return IdentificationMetrics(int(known.sum()), int((~known).sum()), float(right[known].mean()),
                                     float(detected[known].mean()), far, threshold)


class Scorer:
    """Cosine scores of normalised file embeddings against speaker means, AS-norm'ed when ``cohort`` is given
    (AS-norm1 over the ``cohort_size`` highest cohort scores of each side, as ``--eval --score_norm asnorm``)."""

    def __init__(self, cohort: torch.Tensor | None, cohort_size: int = 200):
        self.cohort, self.cohort_size = cohort, cohort_size

    def _statistics(self, vectors: torch.Tensor):
        return top_cohort_statistics(vectors.float() @ self.cohort.T, self.cohort_size)

    def against(self, vectors: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
        """``(files, speakers)`` scores: one matrix product (in the matrix's precision)."""
        scores = (vectors.to(means.dtype) @ means.T).float()
        if self.cohort is None:
            return scores
        test_mean, test_std = self._statistics(vectors)
        model_mean, model_std = self._statistics(means)
        return 0.5 * ((scores - test_mean[:, None]) / test_std.clamp_min(1e-8)[:, None]
                      + (scores - model_mean[None]) / model_std.clamp_min(1e-8)[None])

    def pairs(self, enroll: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        """The score of each pair ``(enroll[i], test[i])``, the enrolment file as a one-file speaker."""
        scores = (enroll * test).sum(dim=1)
        if self.cohort is None:
            return scores
        enroll_mean, enroll_std = self._statistics(enroll)
        test_mean, test_std = self._statistics(test)
        return 0.5 * ((scores - enroll_mean) / enroll_std.clamp_min(1e-8)
                      + (scores - test_mean) / test_std.clamp_min(1e-8))


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any error): a writer takes the lock before it reads,
    so two enrolments of one speaker at once serialise instead of losing one's files."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def __enter__(self):
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, kind, error, trace):
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def _create(connection: sqlite3.Connection) -> None:
    for statement in TABLES.split(";"):
        if statement.strip():
            connection.execute(statement)
    connection.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA),))


def _check_name(speaker: str) -> None:
    if not speaker or speaker != speaker.strip() or any(ch.isspace() for ch in speaker):
        raise SpeakerNetError(f"speaker name {speaker!r}: a non-empty name without spaces")
    if speaker == UNKNOWN:
        raise SpeakerNetError(f"speaker name {UNKNOWN!r} is the answer for nobody enrolled: choose another")


def _spec_words(identity: dict) -> str:
    model = identity.get("model") or {}
    return f"{model.get('model', '?')}, nOut {model.get('nOut', '?')}, eval_frames {identity.get('eval_frames')}"


def session_split(files: list[str], impostor_every: int = 2) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """An identification protocol from ``speaker/session/utterance`` paths (VoxCeleb's and the synthetic
    corpus's layout): every ``impostor_every``-th speaker (sorted by name, starting with the second) is held out
    as an impostor; each other speaker is enrolled with the files of its first session (sorted) and its other
    sessions' files are the known tests. Returns ``(enrol, test)`` lists of ``(speaker, path)``; the test list
    holds the impostors' files too. A speaker with one session only is left out (nothing to identify)."""
    sessions: dict[str, dict[str, list[str]]] = {}
    for path in files:
        parts = path.replace(os.sep, "/").split("/")
        if len(parts) < 3:
            raise SpeakerNetError(f"{path}: expected speaker/session/file")
        sessions.setdefault(parts[-3], {}).setdefault(parts[-2], []).append(path)
    enrol, test = [], []
    for rank, speaker in enumerate(sorted(sessions)):
        by_session = [sorted(sessions[speaker][name]) for name in sorted(sessions[speaker])]
        if impostor_every and rank % impostor_every == impostor_every - 1:
            test += [(speaker, path) for session in by_session for path in session]
        elif len(by_session) > 1:
            enrol += [(speaker, path) for path in by_session[0]]
            test += [(speaker, path) for session in by_session[1:] for path in session]
    return enrol, test

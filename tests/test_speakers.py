"""Enrolment and open-set identification: the SQLite speaker database, its command line and its failure modes."""

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

import inference
from spknet import load_embedder
from spknet.errors import SpeakerNetError
from spknet.speakers import UNKNOWN, SpeakerDB, Threshold, threshold_at_far
from tests.helpers import REPO, SUBPROCESS_ENV, fixture_file


@pytest.fixture(scope="module")
def speakers_of(tiny_corpus):
    """``{speaker: [files]}`` of the tiny corpus's training list."""
    groups: dict[str, list[str]] = {}
    with open(tiny_corpus["train_list"]) as handle:
        for line in handle:
            speaker, path = line.split()
            groups.setdefault(speaker, []).append(os.path.join(tiny_corpus["train_path"], path))
    return groups


@pytest.fixture(scope="module")
def embedder(random_checkpoint):
    return load_embedder(str(random_checkpoint), device="cpu", scoring="cosine", calibration=None)


def run(*argv):
    """``inference.main(argv)``'s exit status."""
    return inference.main([str(arg) for arg in argv])


def names(speakers_of, count):
    return sorted(speakers_of)[:count]


def test_one_file_speakers_score_as_verify_does(embedder, speakers_of, tmp_path, capsys, random_checkpoint):
    alice, bob = names(speakers_of, 2)
    db_path = tmp_path / "speakers.db"
    with SpeakerDB(db_path, embedder, create=True) as db:
        db.enroll(alice, speakers_of[alice][:1])
        db.enroll(bob, speakers_of[bob][:1])
        probe = speakers_of[alice][1]
        (answer,) = db.identify([probe], top_k=2)
    expected = {alice: embedder.score(speakers_of[alice][0], probe), bob: embedder.score(speakers_of[bob][0], probe)}
    assert {candidate.speaker: candidate.score for candidate in answer.candidates} == pytest.approx(expected,
                                                                                                     abs=1e-5)
    assert answer.candidates[0].score >= answer.candidates[1].score
    assert answer.threshold is None and answer.speaker == answer.candidates[0].speaker
    # the command line: verify --scoring cosine prints the score identify prints for the pair
    assert run("verify", "--initial_model", random_checkpoint, "--scoring", "cosine", "--device", "cpu",
               speakers_of[alice][0], probe) == 0
    verified = capsys.readouterr().out.split()[1]
    assert run("identify", "--initial_model", random_checkpoint, "--db", db_path, "--device", "cpu", probe) == 0
    printed = capsys.readouterr().out
    assert f"{alice}  score {verified}" in printed


def test_a_speaker_of_several_files_is_the_normalised_mean(embedder, speakers_of, tmp_path):
    (alice,) = names(speakers_of, 1)
    files = speakers_of[alice][:3]
    with SpeakerDB(tmp_path / "s.db", embedder, create=True) as db:
        assert db.enroll(alice, files[:2]) == 2
        assert db.enroll(alice, files[2:]) == 3                 # a second enrolment adds to the speaker
        assert db.enroll(alice, files[2:]) == 3                 # the same file again replaces its embedding
        _, means = db.matrix()
        expected = F.normalize(db.embed(files).mean(dim=0), dim=0)
        assert torch.allclose(means[0], expected, atol=1e-6)
        assert db.files(alice) == sorted(os.path.abspath(path) for path in files)


def test_speakers_are_listed_renamed_and_removed(embedder, speakers_of, tmp_path, capsys, random_checkpoint):
    first, second, third = names(speakers_of, 3)
    enrol = tmp_path / "enrol.txt"
    enrol.write_text("".join(f"{speaker} {path}\n" for speaker in (first, second, third)
                             for path in speakers_of[speaker][:2]))
    db_path = tmp_path / "speakers.db"
    assert run("enroll", "--initial_model", random_checkpoint, "--db", db_path, "--list", enrol,
               "--device", "cpu") == 0
    assert run("speakers", "--db", db_path, "--rename", first, "carol") == 0
    assert run("speakers", "--db", db_path, "--remove", second) == 0
    out = capsys.readouterr().out
    assert "carol\t2 file(s)" in out and "2 speaker(s); threshold none" in out.splitlines()[-1]
    with SpeakerDB(db_path) as db:
        assert db.speakers() == sorted([("carol", 2), (third, 2)])
        assert db.files(third)                                  # the others' files are untouched
        (left,) = db._execute("SELECT COUNT(*) FROM files").fetchone()
        assert left == 4                                        # the removed speaker's files went with it


def test_the_threshold_answers_unknown(embedder, speakers_of, tmp_path, capsys, random_checkpoint):
    enrolled, impostor = names(speakers_of, 2)
    db_path = tmp_path / "speakers.db"
    with SpeakerDB(db_path, embedder, create=True) as db:
        db.enroll(enrolled, speakers_of[enrolled][:2])
        known = db.identify([speakers_of[enrolled][2]])[0].candidates[0].score
        stranger = db.identify([speakers_of[impostor][0]])[0].candidates[0].score
    threshold = (known + stranger) / 2 if known > stranger else known - 1e-3
    assert run("identify", "--initial_model", random_checkpoint, "--db", db_path, "--device", "cpu",
               "--threshold", threshold, speakers_of[enrolled][2]) == 0
    assert f": {enrolled} (threshold" in capsys.readouterr().out
    with SpeakerDB(db_path) as db:                              # the threshold is kept in the database
        assert db.threshold() == Threshold(threshold)
    # it is a threshold of cosine scores: AS-norm scores are not compared with it
    assert run("identify", "--initial_model", random_checkpoint, "--db", db_path, "--device", "cpu",
               "--score_norm", "asnorm", speakers_of[enrolled][2]) == 2
    assert "its threshold was set on plain cosine scores, and these are AS-norm ones" in capsys.readouterr().err
    if known > stranger:
        assert run("identify", "--initial_model", random_checkpoint, "--db", db_path, "--device", "cpu",
                   speakers_of[impostor][0]) == 0
        assert f": {UNKNOWN} (threshold" in capsys.readouterr().out


def test_the_threshold_from_a_false_alarm_rate(embedder, speakers_of, tiny_corpus, tmp_path, capsys,
                                               random_checkpoint):
    (alice,) = names(speakers_of, 1)
    db_path = tmp_path / "speakers.db"
    with SpeakerDB(db_path, embedder, create=True) as db:
        db.enroll(alice, speakers_of[alice][:1])
    assert run("identify", "--initial_model", random_checkpoint, "--db", db_path, "--device", "cpu", "--far", "0.1",
               "--test_list", tiny_corpus["test_list"], "--test_path", tiny_corpus["test_path"]) == 0
    assert "false alarms 0.1 on" in capsys.readouterr().out
    with SpeakerDB(db_path, embedder) as db:
        stored = db.threshold()
        trials = [line.split() for line in open(tiny_corpus["test_list"])]
        root = tiny_corpus["test_path"]
        scores = db.scoring().pairs(db.embed([os.path.join(root, t[1]) for t in trials]),
                                    db.embed([os.path.join(root, t[2]) for t in trials])).numpy()
    labels = np.array([t[0] == "1" for t in trials])
    assert stored.far == 0.1 and np.mean(scores[~labels] > stored.value) <= 0.1
    assert np.mean(scores[~labels] >= stored.value) > 0.1 - 1 / (~labels).sum()   # the smallest such threshold
    assert stored.miss == pytest.approx(np.mean(scores[labels] <= stored.value))


def test_threshold_at_far():
    non_target = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.4, 0.6, 0.8, 0.0])
    assert threshold_at_far(non_target, 0.1) == 0.8           # only 0.9 is above it: 1 false alarm in 10
    assert threshold_at_far(non_target, 0.25) == 0.7
    assert threshold_at_far(non_target, 0.01) == 0.9          # none above
    with pytest.raises(SpeakerNetError, match="strictly between 0 and 1"):
        threshold_at_far(non_target, 1.0)


def test_identification_metrics_on_known_vectors(embedder, speakers_of, tmp_path):
    """Four enrolled speakers on the axes, test vectors near them (one confused), impostors in between."""
    db = SpeakerDB(tmp_path / "m.db", embedder, create=True)
    dim = embedder.embed(speakers_of[names(speakers_of, 1)[0]][0]).shape[1]
    axes = torch.eye(dim)[:5]
    db.enroll_embeddings({name: [f"{name}.wav"] for name in "abcd"}, axes[:4])
    tests = F.normalize(torch.stack([axes[0] + 0.1 * axes[1], axes[1] + 0.2 * axes[2], axes[2] + 0.1 * axes[3],
                                     axes[1] + 0.9 * axes[3],          # d's file, closer to b: a top-1 error
                                     axes[0] + axes[1] + axes[2] + axes[3], axes[4] + 0.5 * axes[0]]), dim=1)
    metrics = db.evaluate_vectors(["a", "b", "c", "d", "x", "y"], tests, far=0.4)
    assert (metrics.known_files, metrics.impostor_files) == (4, 2)
    assert metrics.top1 == 0.75
    # impostor best scores 0.5 and 0.447: at 40 % false alarms the threshold is the highest, 0.5
    assert metrics.threshold == pytest.approx(0.5)
    assert metrics.dir_at_far == 0.75                           # the three right answers score above 0.5
    assert "closed-set top-1 75.00 %" in metrics.summary()
    half = SpeakerDB(tmp_path / "m.db", embedder, dtype=torch.float16)
    assert [a.candidates[0].speaker for a in half.identify_vectors(list("abcd"), tests[:4])] == list("abcb")
    db.close()
    half.close()


def test_asnorm_uses_the_stored_cohort(embedder, speakers_of, tmp_path):
    chosen = names(speakers_of, 6)
    with SpeakerDB(tmp_path / "s.db", embedder, create=True) as db:
        with pytest.raises(SpeakerNetError, match="AS-norm needs a cohort of 2 speakers or more"):
            db.scoring("asnorm")
        assert db.set_cohort({name: speakers_of[name][:2] for name in chosen[2:]}) == 4
        db.enroll(chosen[0], speakers_of[chosen[0]][:1])
        probe = db.embed(speakers_of[chosen[0]][1:2])
        (answer,) = db.identify_vectors(["probe"], probe, score_norm="asnorm", cohort_size=3)
        raw = float(probe[0] @ db.matrix()[1][0])
        cohort = db.cohort()
        model, test = db.matrix()[1][0] @ cohort.T, probe[0] @ cohort.T
        top_m, top_t = model.topk(3).values, test.topk(3).values
        expected = 0.5 * ((raw - top_m.mean()) / top_m.std() + (raw - top_t.mean()) / top_t.std())
        assert answer.candidates[0].score == pytest.approx(float(expected), rel=1e-3)   # near-equal random embeddings


def test_an_asnorm_threshold_holds_for_its_cohort_and_cohort_size(embedder, speakers_of, tmp_path):
    """A threshold of AS-norm scores is kept with the cohort and the number of its speakers each side keeps:
    identification with another --cohort_size, or after the cohort was replaced, is refused naming what changed."""
    chosen = names(speakers_of, 8)
    with SpeakerDB(tmp_path / "s.db", embedder, create=True) as db:
        db.set_cohort({name: speakers_of[name][:2] for name in chosen[2:6]})
        db.enroll(chosen[0], speakers_of[chosen[0]][:2])
        enroll = [speakers_of[chosen[0]][2], speakers_of[chosen[1]][0], speakers_of[chosen[0]][3]]
        test = [speakers_of[chosen[0]][4], speakers_of[chosen[0]][5], speakers_of[chosen[1]][1]]
        stored = db.threshold_from_trials(enroll, test, [1, 0, 0], far=0.5, source="dev", score_norm="asnorm",
                                          cohort_size=3)
        assert (stored.cohort_size, stored.cohort) == (3, db.cohort_digest())
        probe = db.embed(speakers_of[chosen[0]][1:2])
        (answer,) = db.identify_vectors(["probe"], probe, score_norm="asnorm", cohort_size=3)
        assert answer.threshold == stored.value
        with pytest.raises(SpeakerNetError, match="over the top 3 cohort speakers, and these use 2: identify with "
                                                  "--cohort_size 3"):
            db.identify_vectors(["probe"], probe, score_norm="asnorm", cohort_size=2)
        db.set_cohort({name: speakers_of[name][:2] for name in chosen[4:8]})
        with pytest.raises(SpeakerNetError, match="its cohort was replaced after its AS-norm threshold was set"):
            db.identify_vectors(["probe"], probe, score_norm="asnorm", cohort_size=3)
        (given,) = db.identify_vectors(["probe"], probe, threshold=0.5, score_norm="asnorm", cohort_size=2)
        assert given.threshold == 0.5                           # a threshold given with the call is not checked
        db.set_threshold(Threshold(stored.value, score_norm="asnorm"))       # a database from before the record
        (old,) = db.identify_vectors(["probe"], probe, score_norm="asnorm", cohort_size=2)
        assert old.threshold == stored.value


def test_another_models_database_is_refused(embedder, speakers_of, tmp_path, capsys, random_checkpoint):
    (alice,) = names(speakers_of, 1)
    db_path = tmp_path / "speakers.db"
    assert run("enroll", "--initial_model", random_checkpoint, "--db", db_path, "--speaker", alice,
               speakers_of[alice][0], "--device", "cpu") == 0
    capsys.readouterr()
    seed = fixture_file("seed_mp_balance_sap.model")
    assert run("identify", "--initial_model", seed, "--db", db_path, "--device", "cpu", speakers_of[alice][1]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert f"made with model {random_checkpoint}" in error[0] and f"not with {seed}" in error[0]


@pytest.mark.parametrize("case", ["empty", "short", "missing"])
def test_bad_audio_changes_nothing(case, embedder, speakers_of, tmp_path, capsys, random_checkpoint):
    (alice,) = names(speakers_of, 1)
    db_path = tmp_path / "speakers.db"
    with SpeakerDB(db_path, embedder, create=True) as db:
        db.enroll(alice, speakers_of[alice][:1])
    bad = tmp_path / f"{case}.wav"
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "short":
        sf.write(bad, np.random.default_rng(0).standard_normal(100).astype(np.float32) * 0.1, 16000)
    before = db_path.read_bytes()
    assert run("enroll", "--initial_model", random_checkpoint, "--db", db_path, "--speaker", alice,
               speakers_of[alice][1], bad, "--device", "cpu") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(bad) in error[0]
    with SpeakerDB(db_path) as db:
        assert db.speakers() == [(alice, 1)]
    assert db_path.read_bytes() == before


def test_bad_databases_and_names(embedder, speakers_of, tmp_path, capsys, random_checkpoint):
    (alice,) = names(speakers_of, 1)
    missing = tmp_path / "missing.db"
    assert run("speakers", "--db", missing) == 2
    assert "no such speaker database" in capsys.readouterr().err
    assert not missing.exists()
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(4096))
    assert run("speakers", "--db", corrupt) == 2
    assert "not a readable speaker database" in capsys.readouterr().err
    db_path = tmp_path / "speakers.db"
    with SpeakerDB(db_path, embedder, create=True) as db:
        db.enroll(alice, speakers_of[alice][:1])
    for argv, message in ((["--remove", "nobody"], "no speaker named 'nobody'; enrolled: "),
                          (["--rename", "nobody", "x"], "no speaker named 'nobody'"),
                          (["--rename", alice, UNKNOWN], "is the answer for nobody enrolled")):
        assert run("speakers", "--db", db_path, *argv) == 2
        assert message in capsys.readouterr().err
    connection = sqlite3.connect(db_path)
    connection.execute("UPDATE meta SET value='99' WHERE key='schema'")
    connection.commit()
    connection.close()
    assert run("speakers", "--db", db_path) == 2
    assert "schema 99, newer than this SpeakerNet's 1" in capsys.readouterr().err


ENROL = """
import sys
import inference
sys.exit(inference.main(sys.argv[1:]))
"""

# Enrols, but SIGKILLs itself inside the transaction, after the files' rows are written and before the commit.
KILL_DURING_ENROL = """
import os, signal, sys
import inference
from spknet import speakers
def killed(self, speaker_id):
    os.kill(os.getpid(), signal.SIGKILL)
speakers.SpeakerDB._update_mean = killed
sys.exit(inference.main(sys.argv[1:]))
"""


def enrol_process(script, db_path, checkpoint, speaker, files):
    argv = ["enroll", "--initial_model", str(checkpoint), "--db", str(db_path), "--speaker", speaker,
            "--device", "cpu", *files]
    return subprocess.Popen([sys.executable, "-c", script, *argv], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **SUBPROCESS_ENV})


@pytest.mark.slow
def test_two_processes_enrolling_at_once_lose_nothing(speakers_of, tmp_path, random_checkpoint):
    first, second = names(speakers_of, 2)
    db_path = tmp_path / "speakers.db"
    jobs = [enrol_process(ENROL, db_path, random_checkpoint, first, speakers_of[first][:3]),
            enrol_process(ENROL, db_path, random_checkpoint, second, speakers_of[second][:2]),
            enrol_process(ENROL, db_path, random_checkpoint, first, speakers_of[first][3:5])]
    for job in jobs:
        _, errors = job.communicate(timeout=300)
        assert job.returncode == 0, errors
    with SpeakerDB(db_path) as db:
        assert db.speakers() == sorted([(first, 5), (second, 2)])


@pytest.mark.slow
def test_a_killed_enrolment_leaves_the_database_as_it_was(embedder, speakers_of, tmp_path, random_checkpoint):
    first, second = names(speakers_of, 2)
    db_path = tmp_path / "speakers.db"
    with SpeakerDB(db_path, embedder, create=True) as db:
        db.enroll(first, speakers_of[first][:2])
        before = (db.speakers(), db.matrix()[1].clone())
    job = enrol_process(KILL_DURING_ENROL, db_path, random_checkpoint, second, speakers_of[second][:2])
    job.communicate(timeout=300)
    assert job.returncode == -9
    with SpeakerDB(db_path) as db:
        assert db.speakers() == before[0]
        assert torch.equal(db.matrix()[1], before[1])
        (files,) = db._execute("SELECT COUNT(*) FROM files").fetchone()
        assert files == 2


def test_session_split_makes_an_open_set_protocol(tmp_path, capsys):
    from scripts import identification_lists
    files = [f"id{speaker}/s{session}/{utterance:05d}.wav" for speaker in range(4) for session in (2, 1)
             for utterance in (1, 2)] + ["id9/s1/00001.wav"]
    trials = tmp_path / "trials.txt"
    trials.write_text("".join(f"1 {a} {b}\n" for a, b in zip(files[::2], files[1::2])) + f"0 {files[-1]} {files[0]}\n")
    assert identification_lists.main(["--test_list", str(trials), "--out", str(tmp_path / "out")]) == 0
    enrol = [line.split() for line in (tmp_path / "out" / "enrol.txt").read_text().splitlines()]
    test = [line.split() for line in (tmp_path / "out" / "test.txt").read_text().splitlines()]
    # id0 and id2 enrolled on their first session (s1), id1 and id3 impostors, id9 (one session) dropped
    assert enrol == [["id0", "id0/s1/00001.wav"], ["id0", "id0/s1/00002.wav"],
                     ["id2", "id2/s1/00001.wav"], ["id2", "id2/s1/00002.wav"]]
    assert {speaker for speaker, _ in test} == {"id0", "id1", "id2", "id3"}
    assert ["id0", "id0/s2/00001.wav"] in test and ["id1", "id1/s1/00001.wav"] in test
    assert "2 speakers enrolled from 4 files; 12 test files (2 impostor speakers)" in capsys.readouterr().out


def test_llrs_come_from_a_calibration_made_for_these_scores(embedder, speakers_of, tmp_path):
    from spknet.calibration import calibrate, scoring_options
    alice, bob = names(speakers_of, 2)
    trials = tmp_path / "trials.txt"
    trials.write_text("1 a b\n")
    scores, labels = np.array([0.9, 0.8, 0.3, 0.2, 0.85, 0.1]), np.array([1, 1, 0, 0, 1, 0])

    def fitted(scoring):
        options = scoring_options(embedder.eval_frames, scoring, "none", embedder.test_normalize,
                                  embedder.pipeline.scale, embedder.pipeline.pad)
        return calibrate(scores, labels, embedder.weights_sha256(), options, str(trials))

    cosine = fitted("cosine")
    db_path = tmp_path / "s.db"
    with SpeakerDB(db_path, embedder, create=True, calibration=cosine) as db:
        db.enroll(alice, speakers_of[alice][:1])
        db.enroll(bob, speakers_of[bob][:1])
        (answer,) = db.identify(speakers_of[alice][1:2], top_k=2)
    for candidate in answer.candidates:
        assert candidate.llr == pytest.approx(float(cosine.llr(np.array([candidate.score]))[0]), abs=1e-6)
    with SpeakerDB(db_path, embedder, calibration=fitted("crops")) as db:   # made for other scores: no LLRs
        (answer,) = db.identify(speakers_of[alice][1:2], top_k=2)
    assert all(candidate.llr is None for candidate in answer.candidates)

"""Kaldi data directories (spknet.data.kaldi) and Kaldi trial lists, on directories written in the test."""

import gc
import re

import numpy as np
import pytest
import soundfile as sf

from spknet.data.kaldi import (
    check_segment_bounds,
    probe_recording_lengths,
    read_kaldi_dir,
    read_recording,
    read_segment,
    resolve_trial_keys,
)
from spknet.errors import SpeakerNetError
from spknet.evaluation import Trial, read_trial_list
from spknet.evaluation.trials import read_trial_file

RATE = 16000


def write_wav(path, seconds: float, seed: int = 0) -> np.ndarray:
    """A PCM-16 file of noise; returns its samples as soundfile reads them (float32)."""
    samples = np.random.default_rng(seed).integers(-20000, 20000, round(seconds * RATE)).astype(np.int16)
    sf.write(str(path), samples, RATE, subtype="PCM_16")
    return samples.astype(np.float32) / 32768


def make_dir(root, files: dict, name: str = "data") -> str:
    directory = root / name
    directory.mkdir()
    for file, text in files.items():
        (directory / file).write_text(text)
    return str(directory)


@pytest.fixture
def wavs(tmp_path):
    """Three recordings: r1 (1 s), r2 (0.5 s), r3 (0.75 s): name -> (path, samples)."""
    audio = tmp_path / "audio"
    audio.mkdir()
    return {name: (str(audio / f"{name}.wav"), write_wav(audio / f"{name}.wav", seconds, seed))
            for seed, (name, seconds) in enumerate([("r1", 1.0), ("r2", 0.5), ("r3", 0.75)])}


def scp(wavs, names=("r1", "r2", "r3")) -> str:
    return "".join(f"{name} {wavs[name][0]}\n" for name in names)


# ----------------------------------------------------------------------------------------------------------------
# Reading good directories
# ----------------------------------------------------------------------------------------------------------------

def test_plain_directory(tmp_path, wavs):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": scp(wavs), "utt2spk": "r1 zed\nr2 amy\nr3 zed\n"}))
    assert len(data) == 3 and data.keys == ("r1", "r2", "r3")
    assert data.speakers == ("amy", "zed") and data.labels.tolist() == [1, 0, 1]
    assert [data.display_name(i) for i in range(3)] == ["r1", "r2", "r3"]
    first = data.utterance(0)
    assert (first.speaker, first.recording, first.location.path) == ("zed", "r1", wavs["r1"][0])
    assert (first.start, first.end, first.duration, first.location.is_pipe) == (None, None, None, False)
    for i, name in enumerate(["r1", "r2", "r3"]):
        samples, rate = data.read(i)
        assert rate == RATE and samples.dtype == np.float32
        np.testing.assert_array_equal(samples, wavs[name][1])
    window, _ = data.read(0, offset=100, frames=50)
    np.testing.assert_array_equal(window, wavs["r1"][1][100:150])
    tail, _ = data.read(1, offset=7990, frames=100)         # cut where the utterance ends
    np.testing.assert_array_equal(tail, wavs["r2"][1][7990:])
    with pytest.raises(ValueError):
        data.labels[0] = 5                                  # the description is read-only
    with pytest.raises(SpeakerNetError, match=r"wav.scp:2: .*utterance 'r2'.*offset 8000 is outside"):
        data.read(1, offset=8000)


def test_spk2utt_only_and_its_order(tmp_path, wavs):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": scp(wavs), "spk2utt": "zed r3 r1\namy r2\n"}))
    assert data.keys == ("r3", "r1", "r2") and data.labels.tolist() == [1, 1, 0]
    assert data.speakers == ("amy", "zed")


def test_relative_paths_follow_the_current_directory_or_root(tmp_path, wavs, monkeypatch):
    directory = make_dir(tmp_path, {"wav.scp": "r1 audio/r1.wav\n", "utt2spk": "r1 amy\n"})
    monkeypatch.chdir(tmp_path)
    data = read_kaldi_dir(directory)
    assert data.utterance(0).location.path == "audio/r1.wav"
    np.testing.assert_array_equal(data.read(0)[0], wavs["r1"][1])
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(SpeakerNetError, match=r"wav.scp:1: audio/r1.wav.*cannot read audio"):
        read_kaldi_dir(directory).read(0)
    rooted = read_kaldi_dir(directory, root=str(tmp_path))
    assert rooted.utterance(0).location.path == str(tmp_path / "audio" / "r1.wav")
    np.testing.assert_array_equal(rooted.read(0)[0], wavs["r1"][1])


def test_segments_read_exactly_their_samples(tmp_path, wavs, monkeypatch):
    files = {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "a amy\nb amy\nc bob\n",
             "segments": "a r1 0.25 0.5\nb r1 0.5 -1\nc r2 0.1 0.2\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files))
    a, b, c = (data.utterance(i) for i in range(3))
    assert (a.recording, a.start, a.end, a.duration) == ("r1", 0.25, 0.5, 0.25)
    assert (b.start, b.end, b.duration) == (0.5, None, None)      # to the end; r1's length is not known yet
    assert c.duration == pytest.approx(0.1)
    r1 = wavs["r1"][1]
    calls = []
    original_read = sf.SoundFile.read

    def spy(handle, frames=-1, *args, **kwargs):
        calls.append((handle.tell(), frames))
        return original_read(handle, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    samples, rate = read_segment(wavs["r1"][0], 0.25, 0.5)
    assert rate == RATE and calls == [(4000, 4000)]          # seeks to the start, reads only the segment
    np.testing.assert_array_equal(samples, r1[4000:8000])
    np.testing.assert_array_equal(read_segment(wavs["r1"][0], 0.5, -1)[0], r1[8000:])
    np.testing.assert_array_equal(read_segment(wavs["r1"][0], 0.5, None)[0], r1[8000:])
    calls.clear()
    np.testing.assert_array_equal(data.read(0)[0], r1[4000:8000])
    np.testing.assert_array_equal(data.read(0, offset=10, frames=20)[0], r1[4010:4030])
    assert calls == [(4000, 4000), (4010, 20)]
    np.testing.assert_array_equal(data.read(1)[0], r1[8000:])
    np.testing.assert_array_equal(data.read(2)[0], wavs["r2"][1][1600:3200])
    with pytest.raises(SpeakerNetError, match=r"r1.wav: segment 0.5 to 1.5 s lies outside the recording \(1 s\)"):
        read_segment(wavs["r1"][0], 0.5, 1.5)
    np.testing.assert_array_equal(read_segment(wavs["r1"][0], 0.5, 1.2, max_overshoot=0.25)[0], r1[8000:])


def test_utt2dur_and_reco2dur(tmp_path, wavs):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "r1 amy\nr2 bob\n",
                                              "utt2dur": "r1 1.0\nr2 0.5\n"}))
    assert data.durations.tolist() == [1.0, 0.5] and data.utterance(1).duration == 0.5
    assert data.recording_lengths.tolist() == [1.0, 0.5]        # without segments, utt2dur gives them
    files = {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "a amy\nb bob\n", "segments": "a r1 0.2 -1\nb r2 0 0.3\n",
             "reco2dur": "r1 1.0\nr2 0.5\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files, "segmented"))
    assert data.durations.tolist() == pytest.approx([0.8, 0.3])
    assert data.recording_lengths.tolist() == [1.0, 0.5]
    files["utt2dur"] = "a 0.7\nb 0.3\n"
    data = read_kaldi_dir(make_dir(tmp_path, files, "with_utt2dur"))
    assert data.durations.tolist() == [0.7, 0.3]


def test_segment_bounds_against_measured_lengths(tmp_path, wavs):
    files = {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "a amy\nb bob\n", "segments": "a r1 0 1\nb r2 0.25 0.6\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files))        # r2 is 0.5 s long, which nothing tells the parser
    lengths = probe_recording_lengths(data)
    assert lengths == {"r1": 1.0, "r2": 0.5}
    with pytest.raises(SpeakerNetError, match=r"/segments:2: segment 'b' ends at 0.6 s, past the end of recording "
                                              r"'r2' \(0.5 s\)"):
        check_segment_bounds(data, lengths)
    check_segment_bounds(data, lengths, max_overshoot=0.1)
    with pytest.raises(SpeakerNetError, match=r"wav.scp:2: .*utterance 'b'.*lies outside the recording"):
        data.read(1)


def test_pipes_are_refused_unless_allowed(tmp_path, wavs):
    path = wavs["r1"][0]
    files = {"wav.scp": f"r1 cat {path} |\nr2 cat {path} | cat |\nr3 sh -c 'exit 3' |\nr4 echo hello |\n",
             "utt2spk": "r1 amy\nr2 amy\nr3 bob\nr4 bob\n"}
    directory = make_dir(tmp_path, files)
    with pytest.raises(SpeakerNetError, match=r"/wav.scp:1: .*is a pipe.*--allow_pipes"):
        read_kaldi_dir(directory)
    data = read_kaldi_dir(directory, allow_pipes=True)
    location = data.utterance(0).location
    assert location.is_pipe and location.command == f"cat {path}" and location.path is None
    samples, rate = read_recording(location)
    assert rate == RATE
    np.testing.assert_array_equal(samples, wavs["r1"][1])
    np.testing.assert_array_equal(data.read(1)[0], wavs["r1"][1])     # a shell pipeline
    np.testing.assert_array_equal(data.read(0, offset=5, frames=10)[0], wavs["r1"][1][5:15])
    with pytest.raises(SpeakerNetError, match=r"wav.scp:3: pipe 'sh -c 'exit 3' \|': the command failed \(exit "
                                              r"status 3\)"):
        data.read(2)
    with pytest.raises(SpeakerNetError, match=r"wav.scp:4: pipe 'echo hello \|'.*cannot read audio"):
        data.read(3)


def test_a_streamed_wav_with_zero_sizes_is_read_to_its_end(tmp_path, wavs):
    streamed = bytearray(open(wavs["r2"][0], "rb").read())
    data_at = streamed.find(b"data")
    streamed[4:8] = streamed[data_at + 4:data_at + 8] = bytes(4)        # sizes a writer to a pipe leaves at 0
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    files = {"wav.scp": f"r2 cat {tmp_path / 'streamed.wav'} |\n", "utt2spk": "r2 amy\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files), allow_pipes=True)
    np.testing.assert_array_equal(data.read(0)[0], wavs["r2"][1])


def test_segments_of_a_pipe_recording(tmp_path, wavs):
    files = {"wav.scp": f"r1 cat {wavs['r1'][0]} |\n", "utt2spk": "a amy\n", "segments": "a r1 0.5 0.75\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files), allow_pipes=True)
    np.testing.assert_array_equal(data.read(0)[0], wavs["r1"][1][8000:12000])


def test_root_is_the_working_directory_of_pipes_and_paths_may_hold_spaces(tmp_path, wavs):
    spaced = tmp_path / "my audio"
    spaced.mkdir()
    spaced_samples = write_wav(spaced / "r 9.wav", 0.25, seed=9)
    files = {"wav.scp": f"r1 cat audio/r1.wav |\nr9 {spaced / 'r 9.wav'}\n", "utt2spk": "r1 amy\nr9 bob\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files), allow_pipes=True, root=str(tmp_path))
    assert data.utterance(0).location.cwd == str(tmp_path)
    np.testing.assert_array_equal(data.read(0)[0], wavs["r1"][1])
    assert data.utterance(1).location.path == str(spaced / "r 9.wav")
    np.testing.assert_array_equal(data.read(1)[0], spaced_samples)


def test_segment_to_the_end_takes_its_duration_from_reco2dur(tmp_path, wavs):
    files = {"wav.scp": scp(wavs, ["r1"]), "spk2utt": "amy a b\n", "segments": "a r1 0 0.25\nb r1 0.25 -1\n",
             "reco2dur": "r1 1\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files))
    b = data.utterance(1)
    assert (b.key, b.speaker, b.recording, b.start, b.end, b.duration) == ("b", "amy", "r1", 0.25, None, 0.75)
    assert (b.file, b.line) == (str(tmp_path / "data" / "segments"), 2)
    assert data.read(1)[0].shape == (12000,)


def test_multichannel_audio_is_an_error_naming_the_entry(tmp_path):
    sf.write(str(tmp_path / "stereo.wav"), np.zeros((800, 2), dtype=np.int16), RATE, subtype="PCM_16")
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": f"r1 {tmp_path / 'stereo.wav'}\n", "utt2spk": "r1 a\n"}))
    with pytest.raises(SpeakerNetError, match=r"wav.scp:1: .*stereo.wav.*2 channels, expected mono"):
        data.read(0)
    with pytest.raises(SpeakerNetError, match=r"wav.scp:1: .*stereo.wav: 2 channels, expected mono"):
        read_recording(data.utterance(0).location)


# ----------------------------------------------------------------------------------------------------------------
# Bad directories: each error names the file and line
# ----------------------------------------------------------------------------------------------------------------

GOOD = {"wav.scp": "r1 a.wav\nr2 b.wav\n", "utt2spk": "r1 amy\nr2 bob\n"}
SEGMENTED = {"wav.scp": "r1 a.wav\n", "utt2spk": "u1 amy\nu2 bob\n", "segments": "u1 r1 0 1\nu2 r1 1 2.5\n"}
BAD = [
    ({"utt2spk": "r1 amy\n"}, "data", "no wav.scp"),
    ({"wav.scp": "r1 a.wav\n"}, "data", "no utt2spk or spk2utt"),
    ({"wav.scp": "", "utt2spk": ""}, "wav.scp", "holds no utterances"),
    ({**GOOD, "wav.scp": "r1 a.wav\nr2\n"}, "wav.scp:2", "expected '<recording-id> <path>'"),
    ({**GOOD, "wav.scp": "r1 a.wav\nr2 |\n"}, "wav.scp:2", "needs a command"),
    ({**GOOD, "wav.scp": "r1 a.wav\nr2 cat b.wav |\n"}, "wav.scp:2", "--allow_pipes"),
    ({**GOOD, "wav.scp": "r1 a.wav\nr2 -\n"}, "wav.scp:2", "standard input"),
    ({**GOOD, "wav.scp": "r1 a.wav\nr2 b.ark:123\n"}, "wav.scp:2", "archive offsets"),
    ({**GOOD, "wav.scp": "r1 a.wav\n\nr1 b.wav\n"}, "wav.scp:3", "duplicate key 'r1' (first on line 1)"),
    ({**GOOD, "utt2spk": "r1 amy\nr2 bob x\n"}, "utt2spk:2", "expected '<utt-id> <speaker-id>'"),
    ({**GOOD, "utt2spk": "r1 amy\nr1 bob\n"}, "utt2spk:2", "duplicate key 'r1'"),
    ({**GOOD, "utt2spk": "r1 amy\n"}, "wav.scp:2", "utterance 'r2' has no speaker in utt2spk"),
    ({**GOOD, "utt2spk": "r1 amy\nr2 bob\nr3 bob\n"}, "utt2spk:3", "utterance 'r3' is not in wav.scp"),
    ({"wav.scp": GOOD["wav.scp"], "spk2utt": "amy r1\nbob\n"}, "spk2utt:2", "expected '<speaker-id> <utt-id>"),
    ({"wav.scp": GOOD["wav.scp"], "spk2utt": "amy r1\nbob r2 r1\n"}, "spk2utt:2", "'r1' is listed twice"),
    ({"wav.scp": GOOD["wav.scp"], "spk2utt": "amy r1 r2 r9\n"}, "spk2utt:1", "'r9' is not in wav.scp"),
    ({"wav.scp": GOOD["wav.scp"], "spk2utt": "amy r1\n"}, "wav.scp:2", "'r2' has no speaker in spk2utt"),
    ({**GOOD, "spk2utt": "amy r1\nbob r2 r3\n"}, "spk2utt:2", "'r3' is not in utt2spk"),
    ({**GOOD, "spk2utt": "amy r1 r2\n"}, "spk2utt:1", "'r2' is under speaker 'amy' here but 'bob' in"),
    ({**GOOD, "spk2utt": "amy r1\n"}, "utt2spk:2", "'r2' is missing from"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 1\n"}, "segments:2", "expected '<utt-id> <recording-id> <start-s>"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 x 2\n"}, "segments:2", "the start must be a number"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 1 nan\n"}, "segments:2", "the end must be a number"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu1 r1 1 2\n"}, "segments:2", "duplicate key 'u1'"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r9 1 2\n"}, "segments:2", "names recording 'r9', which is not in"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 2 2\n"}, "segments:2", "ends at 2 s, not after its start 2 s"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 2 1.5\n"}, "segments:2", "not after its start"),
    ({**SEGMENTED, "segments": "u1 r1 -0.5 1\nu2 r1 1 2\n"}, "segments:1", "must not be negative"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 1 2\nu3 r1 2 3\n"}, "segments:3", "'u3' has no speaker"),
    ({**SEGMENTED, "utt2spk": "u1 amy\nu2 bob\nr1 amy\n"}, "utt2spk:3", "'r1' is not in segments"),
    ({**SEGMENTED, "segments": ""}, "segments", "holds no utterances"),
    ({**SEGMENTED, "reco2dur": "r1 2.0\n"}, "segments:2", "'u2' ends at 2.5 s, past the end of recording 'r1' (2 s)"),
    ({**SEGMENTED, "segments": "u1 r1 0 1\nu2 r1 2 -1\n", "reco2dur": "r1 2.0\n"}, "segments:2",
     "'u2' starts at 2 s, past the end"),
    ({**SEGMENTED, "reco2dur": "r1 3\nr2 1\n"}, "reco2dur:2", "recording 'r2' is not in the data directory"),
    ({**SEGMENTED, "reco2dur": "r1 0\n"}, "reco2dur:1", "durations must be positive"),
    ({**GOOD, "utt2dur": "r1 1.0\nr2 inf\n"}, "utt2dur:2", "a duration must be a number"),
    ({**GOOD, "utt2dur": "r1 1.0\nr2 1.0 2\n"}, "utt2dur:2", "expected '<utterance-id> <seconds>'"),
    ({**GOOD, "utt2dur": "r1 1.0\nr3 1.0\n"}, "utt2dur:2", "utterance 'r3' is not in the data directory"),
    ({**GOOD, "utt2dur": "r1 1.0\n"}, "utt2dur", "lacks 1 utterance(s): r2"),
]


@pytest.mark.parametrize("files, where, message", BAD, ids=[f"{w}-{m[:24]}" for _, w, m in BAD])
def test_bad_directories_name_file_and_line(tmp_path, files, where, message):
    directory = make_dir(tmp_path, files)
    expected = f"{directory}/{where}: " if where != "data" else f"{directory}: "
    with pytest.raises(SpeakerNetError) as raised:
        read_kaldi_dir(directory)
    assert str(raised.value).startswith(expected), str(raised.value)
    assert message in str(raised.value)


def test_empty_or_missing_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeakerNetError, match=r"empty: the Kaldi data directory is empty; expected wav.scp"):
        read_kaldi_dir(str(tmp_path / "empty"))
    with pytest.raises(SpeakerNetError, match=r"missing: not a Kaldi data directory \(no such directory\)"):
        read_kaldi_dir(str(tmp_path / "missing"))
    assert gc.isenabled()                                   # the parse pauses the collector, errors or not


# ----------------------------------------------------------------------------------------------------------------
# Kaldi trial lists
# ----------------------------------------------------------------------------------------------------------------

def test_kaldi_trials_equal_the_original_format(tmp_path):
    kaldi, original = tmp_path / "trials", tmp_path / "list.txt"
    kaldi.write_text("u1 u2 target\nu1 u3 nontarget\n\nu2 u3 nontarget\n")
    original.write_text("1 u1 u2\n0 u1 u3\n0 u2 u3\n")
    assert read_trial_list(str(kaldi)) == read_trial_list(str(original)) == [
        Trial(1, "u1", "u2"), Trial(0, "u1", "u3"), Trial(0, "u2", "u3")]
    assert read_trial_file(str(kaldi))[0] == "kaldi" and read_trial_file(str(original))[0] == "labelled"


@pytest.mark.parametrize("text, line", [("u1 u2 target\n1 u1 u3\n", 2), ("1 u1 u2\nu1 u3 nontarget\n", 2),
                                         ("u1 u2\n\nu1 u3 target\n", 3), ("u1 u2 target\nu1 u3\n", 2)])
def test_mixed_trial_formats_name_the_line(tmp_path, text, line):
    path = tmp_path / "trials"
    path.write_text(text)
    with pytest.raises(SpeakerNetError, match=rf"{path}:{line}: mixes trial list formats"):
        read_trial_list(str(path))


def test_bad_kaldi_trial_label(tmp_path):
    path = tmp_path / "trials"
    path.write_text("u1 u2 target\nu1 u3 nontarget\nu2 u3 maybe\n")
    with pytest.raises(SpeakerNetError, match=rf"{path}:3: expected .*'<enroll> <test> target\|nontarget'"):
        read_trial_list(str(path))


def test_resolve_trial_keys(tmp_path):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": "u1 a.wav\nu2 b.wav\nu3 c.wav\n",
                                              "utt2spk": "u1 amy\nu2 amy\nu3 bob\n"}))
    trials = [Trial(1, "u2", "u1"), Trial(0, "u2", "u3")]
    assert resolve_trial_keys(trials, data) == {"u2": 1, "u1": 0, "u3": 2}
    unknown = trials + [Trial(0, f"x{i}", "u1") for i in range(7)]
    with pytest.raises(SpeakerNetError, match=re.escape("trials: 7 trial key(s) not in the Kaldi data directory "
                                                        f"{data.path}: x0, x1, x2, x3, x4 ... and 2 more")):
        resolve_trial_keys(unknown, data, "trials")

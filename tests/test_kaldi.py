"""Kaldi data directories (spknet.data.kaldi) and Kaldi trial lists, on directories written in the test.

Utterances are read as training and evaluation read them: :func:`open_utterance` through the one audio reader
(any rate and channel count, as 16-kHz mono)."""

import gc
import hashlib
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from spknet.data.audio import read_audio
from spknet.data.kaldi import data_dir_digest, load_kaldi_dir, open_utterance, read_kaldi_dir
from spknet.errors import SpeakerNetError
from spknet.evaluation import Trial, read_trial_list
from spknet.evaluation.trials import read_trial_file

RATE = 16000


def write_wav(path, seconds: float, seed: int = 0, rate: int = RATE, channels: int = 1) -> np.ndarray:
    """A PCM-16 file of noise; returns its samples (int16 values as float32, ``(frames, channels)`` when several)."""
    shape = (round(seconds * rate), channels) if channels > 1 else round(seconds * rate)
    samples = np.random.default_rng(seed).integers(-20000, 20000, shape).astype(np.int16)
    sf.write(str(path), samples, rate, subtype="PCM_16")
    return samples.astype(np.float32)


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


def read(data, i: int, start: int = 0, frames: int = -1) -> np.ndarray:
    """Utterance ``i`` (or a window of it) as training reads it."""
    with open_utterance(data, i) as utterance:
        return utterance.read(start, frames)


# ----------------------------------------------------------------------------------------------------------------
# Reading good directories
# ----------------------------------------------------------------------------------------------------------------

def test_plain_directory(tmp_path, wavs):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": scp(wavs), "utt2spk": "r1 zed\nr2 amy\nr3 zed\n"}))
    assert len(data) == 3 and data.keys == ("r1", "r2", "r3")
    assert data.speakers == ("amy", "zed") and data.labels.tolist() == [1, 0, 1]
    assert data.recording_ids == ("r1", "r2", "r3") and data.targets == tuple(wavs[n][0] for n in ("r1", "r2", "r3"))
    assert np.isnan(data.starts).all() and np.isnan(data.ends).all() and np.isnan(data.durations).all()
    assert not data.pipes.any() and data.defined_in.endswith("wav.scp") and data.lines.tolist() == [1, 2, 3]
    for i, name in enumerate(["r1", "r2", "r3"]):
        with open_utterance(data, i) as utterance:
            assert utterance.frames == len(wavs[name][1])
            samples = utterance.read()
        assert samples.dtype == np.float32
        np.testing.assert_array_equal(samples, wavs[name][1])
    np.testing.assert_array_equal(read(data, 0, 100, 50), wavs["r1"][1][100:150])
    with pytest.raises(ValueError):
        data.labels[0] = 5                                  # the description is read-only


def test_spk2utt_only_and_its_order(tmp_path, wavs):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": scp(wavs), "spk2utt": "zed r3 r1\namy r2\n"}))
    assert data.keys == ("r3", "r1", "r2") and data.labels.tolist() == [1, 1, 0]
    assert data.speakers == ("amy", "zed")
    np.testing.assert_array_equal(read(data, 0), wavs["r3"][1])


def test_relative_paths_follow_the_current_directory_or_root(tmp_path, wavs, monkeypatch):
    directory = make_dir(tmp_path, {"wav.scp": "r1 audio/r1.wav\n", "utt2spk": "r1 amy\n"})
    monkeypatch.chdir(tmp_path)
    data = load_kaldi_dir(directory)
    assert data.location(0).path == "audio/r1.wav"
    np.testing.assert_array_equal(read(data, 0), wavs["r1"][1])
    monkeypatch.chdir(tmp_path / "data")
    with pytest.raises(SpeakerNetError, match=r"wav.scp:1: recording 'r1': no such audio file audio/r1.wav"):
        load_kaldi_dir(directory)
    with pytest.raises(SpeakerNetError, match=r"wav.scp:1: audio/r1.wav \(utterance 'r1'\): cannot read audio"):
        read(data, 0)
    rooted = read_kaldi_dir(directory, root=str(tmp_path))
    assert rooted.location(0).path == str(tmp_path / "audio" / "r1.wav")
    np.testing.assert_array_equal(read(rooted, 0), wavs["r1"][1])


def test_segments_read_exactly_their_samples(tmp_path, wavs, monkeypatch):
    files = {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "a amy\nb amy\nc bob\n",
             "segments": "a r1 0.25 0.5\nb r1 0.5 -1\nc r2 0.1 0.2\n"}
    data = load_kaldi_dir(make_dir(tmp_path, files))
    assert data.recording.tolist() == [0, 0, 1] and data.starts.tolist() == [0.25, 0.5, 0.1]
    assert data.ends[0] == 0.5 and np.isnan(data.ends[1]) and data.ends[2] == 0.2
    assert data.durations[0] == 0.25 and np.isnan(data.durations[1])  # to the end; r1's length is not parsed
    assert data.durations[2] == pytest.approx(0.1)
    r1 = wavs["r1"][1]
    calls = []
    original_read = sf.SoundFile.read

    def spy(handle, frames=-1, *args, **kwargs):
        calls.append((handle.tell(), frames))
        return original_read(handle, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    with open_utterance(data, 0) as a:
        assert a.frames == 4000
        np.testing.assert_array_equal(a.read(), r1[4000:8000])
        np.testing.assert_array_equal(a.read(10, 20), r1[4010:4030])
    assert calls == [(4000, 4000), (4010, 20)]          # seeks to the window, reads only it
    np.testing.assert_array_equal(read(data, 1), r1[8000:])
    np.testing.assert_array_equal(read(data, 2), wavs["r2"][1][1600:3200])


def test_segments_of_recordings_at_other_rates_are_resampled(tmp_path):
    """An 8-kHz and a 44.1-kHz recording: a segment's samples are those of the whole recording resampled to
    16 kHz, cut at the segment's times (a window of it too)."""
    for name, rate in (("low", 8000), ("high", 44100)):
        write_wav(tmp_path / f"{name}.wav", 1.0, seed=rate, rate=rate)
    files = {"wav.scp": f"low {tmp_path / 'low.wav'}\nhigh {tmp_path / 'high.wav'}\n",
             "utt2spk": "a amy\nb bob\nc bob\n", "segments": "a low 0.25 0.75\nb high 0.1 0.6\nc high 0.6 -1\n"}
    data = load_kaldi_dir(make_dir(tmp_path, files))
    for i, name, first, stop in ((0, "low", 4000, 12000), (1, "high", 1600, 9600), (2, "high", 9600, 16000)):
        whole = read_audio(str(tmp_path / f"{name}.wav"))
        assert len(whole) == RATE
        with open_utterance(data, i) as utterance:
            assert utterance.frames == stop - first
            np.testing.assert_allclose(utterance.read(), whole[first:stop], atol=0.5)
            np.testing.assert_allclose(utterance.read(1000, 300), whole[first + 1000:first + 1300], atol=0.5)


def test_several_channels_are_mixed_down(tmp_path):
    stereo = write_wav(tmp_path / "stereo.wav", 0.5, seed=3, channels=2)
    write_wav(tmp_path / "four.wav", 0.5, seed=4, rate=8000, channels=4)
    files = {"wav.scp": f"s {tmp_path / 'stereo.wav'}\nq {tmp_path / 'four.wav'}\n", "utt2spk": "u1 a\nu2 a\nu3 b\n",
             "segments": "u1 s 0 -1\nu2 s 0.25 0.5\nu3 q 0.1 0.4\n"}
    data = load_kaldi_dir(make_dir(tmp_path, files))
    mono = stereo.mean(axis=1)
    np.testing.assert_allclose(read(data, 0), mono, atol=1e-3)
    np.testing.assert_allclose(read(data, 1), mono[4000:8000], atol=1e-3)
    np.testing.assert_allclose(read(data, 2), read_audio(str(tmp_path / "four.wav"))[1600:6400], atol=0.5)


def test_utt2dur_and_reco2dur(tmp_path, wavs):
    data = read_kaldi_dir(make_dir(tmp_path, {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "r1 amy\nr2 bob\n",
                                              "utt2dur": "r1 1.0\nr2 0.5\n"}))
    assert data.durations.tolist() == [1.0, 0.5]
    assert data.recording_lengths.tolist() == [1.0, 0.5]        # without segments, utt2dur gives them
    files = {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "a amy\nb bob\n", "segments": "a r1 0.2 -1\nb r2 0 0.3\n",
             "reco2dur": "r1 1.0\nr2 0.5\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files, "segmented"))
    assert data.durations.tolist() == pytest.approx([0.8, 0.3])
    assert data.recording_lengths.tolist() == [1.0, 0.5]
    files["utt2dur"] = "a 0.7\nb 0.3\n"
    data = read_kaldi_dir(make_dir(tmp_path, files, "with_utt2dur"))
    assert data.durations.tolist() == [0.7, 0.3]


def test_segment_to_the_end_takes_its_duration_from_reco2dur(tmp_path, wavs):
    files = {"wav.scp": scp(wavs, ["r1"]), "spk2utt": "amy a b\n", "segments": "a r1 0 0.25\nb r1 0.25 -1\n",
             "reco2dur": "r1 1\n"}
    data = load_kaldi_dir(make_dir(tmp_path, files))
    assert (data.keys[1], data.speakers[data.labels[1]], data.recording_ids[data.recording[1]]) == ("b", "amy", "r1")
    assert (data.starts[1], data.durations[1]) == (0.25, 0.75) and np.isnan(data.ends[1])
    assert (data.defined_in, int(data.lines[1])) == (str(tmp_path / "data" / "segments"), 2)
    with open_utterance(data, 1) as b:
        assert b.frames == 12000
        np.testing.assert_array_equal(b.read(), wavs["r1"][1][4000:])


# ----------------------------------------------------------------------------------------------------------------
# Segment bounds: Kaldi's --max-overshoot
# ----------------------------------------------------------------------------------------------------------------

def test_an_end_within_max_overshoot_is_cut_at_the_recording_end(tmp_path, wavs, logged):
    """Segment times written with two decimals (r2 is 0.5 s, r3 0.75 s): ends past the recording by less than
    0.5 s are cut there, counted in one INFO line; 0.5 s or more past is an error naming the line."""
    files = {"wav.scp": scp(wavs), "utt2spk": "a amy\nb amy\nc bob\n",
             "segments": "a r2 0.00 0.51\nb r3 0.25 0.76\nc r1 0.50 1.00\n"}
    directory = make_dir(tmp_path, files)
    data = load_kaldi_dir(directory)                       # lengths from the files' headers
    assert data.max_overshoot == 0.5
    cut = [record.getMessage() for record in logged.records if "cut at the recording's end" in record.getMessage()]
    assert cut == [f"{directory}/segments: 2 segment(s) end past their recording, by 0.01 s at most (less than "
                   f"--max_overshoot 0.5 s): cut at the recording's end"]
    assert all(record.levelno == logging.INFO for record in logged.records)
    np.testing.assert_array_equal(read(data, 0), wavs["r2"][1])
    np.testing.assert_array_equal(read(data, 1), wavs["r3"][1][4000:])
    np.testing.assert_array_equal(read(data, 2), wavs["r1"][1][8000:])
    (tmp_path / "data" / "segments").write_text("a r2 0.00 0.51\nb r3 0.25 1.25\nc r1 0.50 1.00\n")
    with pytest.raises(SpeakerNetError, match=rf"^{directory}/segments:2: segment 'b' ends at 1.25 s, past the end of "
                                              r"recording 'r3' \(0.75 s\) by 0.5 s, not less than --max_overshoot "
                                              r"0.5 s$"):
        load_kaldi_dir(directory)
    load_kaldi_dir(directory, max_overshoot=0.6)
    (tmp_path / "data" / "segments").write_text("a r2 0.00 0.51\nb r3 0.25 0.76\nc r1 0.50 1.00\n")
    with pytest.raises(SpeakerNetError, match=rf"^{directory}/segments:1: segment 'a' ends at 0.51 s, past the end of "
                                              r"recording 'r2' \(0.5 s\) by 0.01 s, not less than --max_overshoot 0 s"):
        load_kaldi_dir(directory, max_overshoot=0)         # strict: the first offending line is named
    (tmp_path / "data" / "segments").write_text("a r2 0.00 0.50\nb r3 0.25 0.75\nc r1 0.50 1.00\n")
    load_kaldi_dir(directory, max_overshoot=0)             # an end at the recording's end is inside it


def test_bounds_from_reco2dur_and_at_read_time(tmp_path, wavs):
    """reco2dur's lengths are checked when the directory is parsed; a pipe recording's length is known only when
    it is opened, where the same check (and cut) applies."""
    files = {"wav.scp": scp(wavs, ["r1", "r2"]), "utt2spk": "a amy\nb bob\n", "segments": "a r1 0 1\nb r2 0.25 1.1\n",
             "reco2dur": "r1 1.0\nr2 0.5\n"}
    with pytest.raises(SpeakerNetError, match=r"/segments:2: segment 'b' ends at 1.1 s, past the end of recording "
                                              r"'r2' \(0.5 s\) by 0.6 s"):
        read_kaldi_dir(make_dir(tmp_path, files))
    files = {"wav.scp": f"r1 cat {wavs['r1'][0]} |\n", "utt2spk": "a amy\nb amy\nc bob\n",
             "segments": "a r1 0.5 1.2\nb r1 0.5 1.5\nc r1 1.0 -1\n"}
    data = load_kaldi_dir(make_dir(tmp_path, files, "piped"), allow_pipes=True)    # nothing known of r1 yet
    np.testing.assert_array_equal(read(data, 0), wavs["r1"][1][8000:])
    with pytest.raises(SpeakerNetError, match=r"piped/segments:2: segment 'b' ends at 1.5 s, past the end of "
                                              r"recording 'r1' \(1 s\) by 0.5 s, not less than --max_overshoot"):
        open_utterance(data, 1)
    with pytest.raises(SpeakerNetError, match=r"piped/segments:3: segment 'c' starts at 1 s, past the end of "
                                              r"recording 'r1' \(1 s\)"):
        open_utterance(data, 2)


# ----------------------------------------------------------------------------------------------------------------
# Pipes
# ----------------------------------------------------------------------------------------------------------------

def test_pipes_are_refused_unless_allowed(tmp_path, wavs):
    path = wavs["r1"][0]
    files = {"wav.scp": f"r1 cat {path} |\nr2 cat {path} | cat |\nr3 sh -c 'exit 3' |\nr4 echo hello |\n",
             "utt2spk": "r1 amy\nr2 amy\nr3 bob\nr4 bob\n"}
    directory = make_dir(tmp_path, files)
    for load in (read_kaldi_dir, load_kaldi_dir):
        with pytest.raises(SpeakerNetError, match=r"/wav.scp:1: .*is a pipe.*--allow_pipes"):
            load(directory)
    data = load_kaldi_dir(directory, allow_pipes=True)
    location = data.location(0)
    assert location.is_pipe and location.command == f"cat {path}" and location.path is None
    np.testing.assert_array_equal(read(data, 0), wavs["r1"][1])
    np.testing.assert_array_equal(read(data, 1), wavs["r1"][1])          # a shell pipeline
    np.testing.assert_array_equal(read(data, 0, 5, 10), wavs["r1"][1][5:15])
    with pytest.raises(SpeakerNetError, match=r"wav.scp:3: pipe 'sh -c 'exit 3' \|': the command failed \(exit "
                                              r"status 3\)"):
        read(data, 2)
    with pytest.raises(SpeakerNetError, match=r"wav.scp:4: pipe 'echo hello \|' \(utterance 'r4'\): cannot read "
                                              r"audio"):
        read(data, 3)


def test_a_streamed_wav_with_zero_sizes_is_read_to_its_end(tmp_path, wavs):
    streamed = bytearray(open(wavs["r2"][0], "rb").read())
    data_at = streamed.find(b"data")
    streamed[4:8] = streamed[data_at + 4:data_at + 8] = bytes(4)        # sizes a writer to a pipe leaves at 0
    (tmp_path / "streamed.wav").write_bytes(bytes(streamed))
    files = {"wav.scp": f"r2 cat {tmp_path / 'streamed.wav'} |\n", "utt2spk": "r2 amy\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files), allow_pipes=True)
    np.testing.assert_array_equal(read(data, 0), wavs["r2"][1])


def test_segments_of_a_pipe_recording_at_another_rate_in_stereo(tmp_path, wavs):
    write_wav(tmp_path / "r8.wav", 1.0, seed=8, rate=8000, channels=2)
    files = {"wav.scp": f"r1 cat {wavs['r1'][0]} |\nr8 cat {tmp_path / 'r8.wav'} |\n", "utt2spk": "a amy\nb bob\n",
             "segments": "a r1 0.5 0.75\nb r8 0.25 0.5\n"}
    data = load_kaldi_dir(make_dir(tmp_path, files), allow_pipes=True)
    np.testing.assert_array_equal(read(data, 0), wavs["r1"][1][8000:12000])
    np.testing.assert_allclose(read(data, 1), read_audio(str(tmp_path / "r8.wav"))[4000:8000], atol=0.5)


def test_root_is_the_working_directory_of_pipes_and_paths_may_hold_spaces(tmp_path, wavs):
    spaced = tmp_path / "my audio"
    spaced.mkdir()
    spaced_samples = write_wav(spaced / "r 9.wav", 0.25, seed=9)
    files = {"wav.scp": f"r1 cat audio/r1.wav |\nr9 {spaced / 'r 9.wav'}\n", "utt2spk": "r1 amy\nr9 bob\n"}
    data = read_kaldi_dir(make_dir(tmp_path, files), allow_pipes=True, root=str(tmp_path))
    assert data.location(0).cwd == str(tmp_path)
    np.testing.assert_array_equal(read(data, 0), wavs["r1"][1])
    assert data.location(1).path == str(spaced / "r 9.wav")
    np.testing.assert_array_equal(read(data, 1), spaced_samples)


# ----------------------------------------------------------------------------------------------------------------
# The run's identity
# ----------------------------------------------------------------------------------------------------------------

def test_the_data_dir_digest_is_the_one_runs_recorded(tmp_path):
    """Each file present, behind its name and a NUL, in a fixed order: the digest checkpoints of earlier runs
    recorded (this directory's was computed by the code before spknet.files), so they still resume."""
    files = {"wav.scp": "r1 a.wav\nr2 b.wav\n", "utt2spk": "u1 amy\nu2 bob\n", "spk2utt": "amy u1\nbob u2\n",
             "segments": "u1 r1 0 1.25\nu2 r2 0.5 -1\n", "reco2dur": "r1 2\nr2 1\n"}
    directory = make_dir(tmp_path, files)
    assert data_dir_digest(directory) == "c5bb735d2c56239b836d671eab6620802b5a39183b0443c9c894f4463e71571d"
    os.remove(os.path.join(directory, "spk2utt"))
    expected = hashlib.sha256(b"".join(f"{name}\0{files[name]}".encode() for name in ("wav.scp", "utt2spk",
                                                                                       "segments")))
    assert data_dir_digest(directory) == expected.hexdigest()
    (tmp_path / "data" / "reco2dur").write_text("r1 3\n")      # not part of what the directory says
    assert data_dir_digest(directory) == expected.hexdigest()


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


def test_missing_keys_are_counted_and_the_first_named(tmp_path):
    files = {"wav.scp": "".join(f"r{i} {i}.wav\n" for i in range(8)),
             "utt2spk": "".join(f"r{i} amy\n" for i in range(8)), "utt2dur": "r0 1.0\n"}
    with pytest.raises(SpeakerNetError, match=r"utt2dur: lacks 7 utterance\(s\): r1, r2, r3, r4, r5, \.\.\. and 2 "
                                              r"more$"):
        read_kaldi_dir(make_dir(tmp_path, files))


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

"""Compressed audio through the one reader: m4a/aac (VoxCeleb2's files) decoded by FFmpeg (PyAV), mp3 and opus by
libsndfile; windows read by seeking equal the whole file's samples; unreadable files are errors naming them."""

import os

import av
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import trainSpeakerNet
from spknet.data import open_audio, read_audio
from spknet.data.kaldi import KaldiSource, load_kaldi_dir
from spknet.errors import SpeakerNetError


def signal(rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    """``(samples, channels)`` float32: a gliding tone with harmonics and a slow tremolo, each channel its own."""
    t = np.arange(int(rate * seconds)) / rate
    columns = []
    for channel in range(channels):
        pitch = 180 + 60 * channel + 40 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 2.3 * t))
        columns.append(0.25 * wave)
    return np.stack(columns, axis=1).astype(np.float32)


def encode(path, samples: np.ndarray, rate: int, codec: str = "aac") -> str:
    """``samples`` ``(frames, channels)`` encoded by FFmpeg (PyAV) into ``path`` (the container from its name)."""
    channels = samples.shape[1]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono" if channels == 1 else "stereo"
        for start in range(0, len(samples), 1024):
            chunk = np.ascontiguousarray(samples[start:start + 1024].T)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream.layout.name)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return str(path)


def expected(samples: np.ndarray, rate: int) -> np.ndarray:
    """The source as the reader hears it: channels averaged, at 16 kHz, in the int16 range."""
    mono = torch.from_numpy(samples.mean(axis=1))
    if rate != 16000:
        mono = torchaudio.functional.resample(mono, rate, 16000)
    return mono.numpy() * 32768


def best_alignment(decoded: np.ndarray, source: np.ndarray, reach: int = 3000) -> tuple[int, float]:
    """The lag (decoded sample ``i + lag`` is source sample ``i``) in ``[-reach, reach]`` that correlates best,
    and that correlation: a lossy codec's encoder delay, if the container does not remove it."""
    n = min(len(decoded), len(source)) - 2 * reach
    scores = [np.corrcoef(decoded[reach + lag:reach + lag + n], source[reach:reach + n])[0, 1]
              for lag in range(-reach, reach + 1)]
    best = int(np.argmax(scores))
    return best - reach, float(scores[best])


@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2)])
def test_m4a_aac_reads_as_its_source(tmp_path, rate, channels):
    source = signal(rate, 3.0, channels)
    path = encode(tmp_path / "speech.m4a", source, rate)
    decoded = read_audio(path)
    reference = expected(source, rate)
    assert abs(len(decoded) - len(reference)) <= 1
    lag, correlation = best_alignment(decoded, reference, reach=200)
    assert lag == 0                # the mp4 edit list removes AAC's priming samples: sample 0 is the source's
    assert correlation > 0.99
    n = min(len(decoded), len(reference))
    noise = decoded[:n] - reference[:n]
    assert 10 * np.log10(np.sum(reference[:n] ** 2) / np.sum(noise ** 2)) > 20


@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2)])
def test_an_m4a_window_is_read_by_seeking_and_equals_the_whole(tmp_path, rate, channels, monkeypatch):
    path = encode(tmp_path / "speech.m4a", signal(rate, 4.0, channels), rate)
    whole = read_audio(path)
    seeks = []
    original_seek = av.container.InputContainer.seek
    monkeypatch.setattr(av.container.InputContainer, "seek",
                        lambda self, *args, **kwargs: seeks.append(args) or original_seek(self, *args, **kwargs))
    with open_audio(path) as audio:
        assert audio.frames == len(whole)
        for start, frames in ((0, 800), (20000, 16240), (len(whole) - 9000, 5000)):
            np.testing.assert_allclose(audio.read(start, frames), whole[start:start + frames], atol=0.5)
        # the last AAC frame (end-trimmed) decodes a little differently after a seek: within the codec's error
        end = audio.read(len(whole) - 5000, 5000)
        assert np.corrcoef(end, whole[-5000:])[0, 1] > 0.999
    assert len(seeks) == 3          # the windows after the start: seek, then decode only up to the window's end


def test_aac_without_an_index_is_decoded_whole(tmp_path):
    source = signal(16000, 2.0)
    path = encode(tmp_path / "speech.aac", source, 16000)     # ADTS: no index, no edit list
    with open_audio(path) as audio:
        decoded = audio.read()
        np.testing.assert_array_equal(audio.read(5000, 3000), decoded[5000:8000])
    lag, correlation = best_alignment(decoded, expected(source, 16000), reach=2500)
    assert correlation > 0.99 and 0 <= lag <= 2048      # the encoder's priming samples are still there


@pytest.mark.parametrize("fmt,subtype", [("MP3", "MPEG_LAYER_III"), ("OGG", "OPUS")])
def test_mp3_and_opus_through_libsndfile(tmp_path, fmt, subtype):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {subtype}")
    rate = 48000 if subtype == "OPUS" else 16000
    source = signal(rate, 3.0)
    path = str(tmp_path / f"speech.{fmt.lower()}")
    sf.write(path, source, rate, format=fmt, subtype=subtype)
    decoded = read_audio(path)
    _, correlation = best_alignment(decoded, expected(source, rate))
    assert correlation > 0.99


@pytest.mark.parametrize("content", [b"", b"this is not audio at all\n" * 40, "truncated"])
def test_unreadable_files_are_errors_naming_them(tmp_path, content):
    path = tmp_path / "broken.m4a"
    if content == "truncated":
        whole = open(encode(tmp_path / "whole.m4a", signal(16000, 2.0), 16000), "rb").read()
        content = whole[:len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(SpeakerNetError, match=rf"^{path}: (cannot read|cannot decode|truncated)"):
        with open_audio(str(path)) as audio:
            audio.read()


def test_a_kaldi_dir_of_m4a_recordings_and_segments(tmp_path):
    source = signal(16000, 3.0)
    path = encode(tmp_path / "rec.m4a", source, 16000)
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "wav.scp").write_text(f"rec {path}\n")
    (folder / "utt2spk").write_text("a amy\nb amy\n")
    (folder / "segments").write_text("a rec 0 1.25\nb rec 1.25 -1\n")
    data = load_kaldi_dir(str(folder))
    whole = read_audio(path)
    with KaldiSource(data).open(1) as second:
        assert second.frames == len(whole) - 20000
        np.testing.assert_allclose(second.read(100, 1000), whole[20100:21100], atol=0.5)
    (folder / "segments").write_text("a rec 0 1.25\nb rec 1.25 3.5\n")
    with pytest.raises(SpeakerNetError, match=r"segments:2: segment 'b' ends at 3.5 s, past the end of recording"):
        load_kaldi_dir(str(folder))


@pytest.mark.slow
def test_training_with_m4a_files_in_the_list(tiny_corpus, tmp_path, capsys):
    lines = open(tiny_corpus["train_list"]).read().splitlines()
    converted = []
    for number, line in enumerate(lines[:6]):       # one speaker's files as m4a
        speaker, relative = line.split()
        samples, rate = sf.read(os.path.join(tiny_corpus["train_path"], relative), dtype="float32", always_2d=True)
        converted.append(f"{speaker} {encode(tmp_path / f'{number}.m4a', samples, rate)}")
    train_list = tmp_path / "train.txt"
    rest = [line.split() for line in lines[6:]]
    originals = [f"{speaker} {os.path.join(tiny_corpus['train_path'], relative)}" for speaker, relative in rest]
    train_list.write_text("\n".join(converted + originals) + "\n")
    save_path = tmp_path / "run"
    code = trainSpeakerNet.main([
        "--train_list", str(train_list), "--train_path", "", "--test_list", tiny_corpus["test_list"],
        "--test_path", tiny_corpus["test_path"], "--save_path", str(save_path), "--model", "ResNetSE34L",
        "--trainfunc", "softmaxproto", "--nPerSpeaker", "2", "--max_frames", "50", "--eval_frames", "50",
        "--batch_size", "8", "--nDataLoaderThread", "2", "--max_epoch", "1"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (save_path / "model" / "model000000001.model").is_file()

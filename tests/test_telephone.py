"""The telephone channel (spknet/data/telephone.py): a real G.711 mu-law file at 8 kHz that the one reader
decodes back to 16 kHz, the voice band kept and what lies outside it removed."""

import av
import numpy as np
import pytest
import soundfile as sf

from spknet.data.audio import open_audio, read_audio
from spknet.data.telephone import telephone_copy, write_telephone

RATE = 16000


def tones(seconds: float, *frequencies: float, amplitude: float = 6000.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(amplitude * np.sin(2 * np.pi * f * t) for f in frequencies).astype(np.float32)


def level(audio: np.ndarray, frequency: float) -> float:
    """The magnitude of one frequency (Hann-windowed FFT of the middle second, where the filter has settled)."""
    middle = audio[len(audio) // 2 - RATE // 2:len(audio) // 2 + RATE // 2]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    return float(spectrum[int(round(frequency * len(middle) / RATE))])


def test_a_recording_becomes_an_8_khz_mu_law_file_that_reads_back_at_16_khz(tmp_path):
    path = str(tmp_path / "call.wav")
    write_telephone(tones(2.0, 1000.0), path)
    with av.open(path) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == ("pcm_mulaw", 8000, 1)
    with open_audio(path) as audio:
        assert audio.frames == 2 * RATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call.wav"]     # no temporary file left


def test_the_voice_band_passes_and_what_lies_outside_it_is_removed(tmp_path):
    path = str(tmp_path / "call.wav")
    clean = tones(2.0, 100.0, 1000.0, 3000.0, 5000.0)
    write_telephone(clean, path)
    heard = read_audio(path)
    for inside in (1000.0, 3000.0):
        assert level(heard, inside) == pytest.approx(level(clean, inside), rel=0.1)
    for outside in (100.0, 5000.0):     # 5 kHz is above the 4-kHz Nyquist of the line: gone with the resampling
        assert level(heard, outside) < 1e-2 * level(clean, outside)


def test_mu_law_keeps_a_sample_to_a_few_percent_and_clips_at_the_int16_range(tmp_path):
    path = str(tmp_path / "loud.wav")
    write_telephone(tones(2.0, 1000.0, amplitude=60000.0), path)
    line, rate = sf.read(path, dtype="int16")     # the 8-kHz samples as the line carries them
    assert rate == 8000 and np.abs(line.astype(np.int32)).max() > 30000   # clipped at full scale, not wrapped
    quiet = str(tmp_path / "quiet.wav")
    write_telephone(tones(2.0, 1000.0, amplitude=3000.0), quiet)
    middle = read_audio(quiet)[RATE // 2:-RATE // 2]         # away from the filters' edges
    assert np.abs(middle).max() == pytest.approx(3000.0, rel=0.05)


def test_a_corpus_copy_keeps_relative_paths_and_resumes(tmp_path):
    root = tmp_path / "wav"
    files = ["a/s1/1.wav", "b/s1/2.wav"]
    for relative in files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / relative), tones(1.0, 500.0).astype(np.int16), RATE, subtype="PCM_16")
    out = tmp_path / "tel"
    assert telephone_copy(str(root), files, str(out)) == 2
    assert all((out / relative).is_file() for relative in files)
    (out / files[0]).unlink()
    assert telephone_copy(str(root), files, str(out)) == 1      # only the missing one again

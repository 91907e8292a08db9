"""VoxCeleb / MUSAN / RIR preparation (spknet.data.voxceleb through dataprep.py) on small trees the tests make."""

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import soundfile as sf

import dataprep
from spknet.data import read_train_list
from spknet.data import voxceleb as prep_voxceleb
from spknet.data.augment import Augmenter
from spknet.errors import SpeakerNetError


def wav_bytes(samples, rate=16000):
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(samples, dtype=np.int16), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def write_wav(path, samples, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(wav_bytes(samples, rate))
    return str(path)


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)


def make_tar(path, members):
    with tarfile.open(path, "w:gz") as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))


def test_extract_joins_parts_unpacks_and_arranges_voxceleb(tmp_path, capsys):
    vox1_dev = tmp_path / "dev.zip"
    make_zip(vox1_dev, {"wav/id10001/vidA/00001.wav": wav_bytes(np.ones(400)),
                        "wav/id10001/vidA/00002.wav": wav_bytes(np.ones(500))})
    data = vox1_dev.read_bytes()
    (tmp_path / "vox1_dev_own_partaa").write_bytes(data[:len(data) // 2])     # not a published split archive:
    (tmp_path / "vox1_dev_own_partab").write_bytes(data[len(data) // 2:])     # joined with no MD5 to check
    vox1_dev.unlink()
    make_zip(tmp_path / "vox1_test_wav.zip", {"wav/id10270/vidB/00001.wav": wav_bytes(np.ones(300))})
    make_tar(tmp_path / "vox2_dev_aac.tar.gz", {"dev/aac/id00012/vidC/00001.m4a": b"m4a"})
    make_zip(tmp_path / "vox2_test_aac.zip", {"aac/id00500/vidD/00001.m4a": b"m4a"})
    make_tar(tmp_path / "musan.tar.gz", {"musan/noise/x/a.wav": wav_bytes(np.ones(100))})   # left to --musan
    assert dataprep.main(["--extract", "--save_path", str(tmp_path)]) == 0
    assert (tmp_path / "vox1_dev_own.zip").read_bytes() == data
    assert (tmp_path / "voxceleb1" / "id10001" / "vidA" / "00002.wav").is_file()
    assert (tmp_path / "voxceleb1" / "id10270" / "vidB" / "00001.wav").is_file()
    assert (tmp_path / "voxceleb2" / "id00012" / "vidC" / "00001.m4a").is_file()
    assert (tmp_path / "voxceleb2" / "id00500" / "vidD" / "00001.m4a").is_file()
    assert not (tmp_path / "wav").exists() and not (tmp_path / "dev").exists() and not (tmp_path / "aac").exists()
    assert not (tmp_path / "musan").exists()
    capsys.readouterr()
    assert dataprep.main(["--extract", "--save_path", str(tmp_path)]) == 0          # again: nothing to redo
    assert "already unpacked" in capsys.readouterr().out


def test_extract_checks_the_md5_of_a_published_split_archive(tmp_path, capsys):
    (tmp_path / "vox1_dev_wav_partaa").write_bytes(b"not")
    assert dataprep.main(["--extract", "--save_path", str(tmp_path)]) == 2          # parts missing: not joined
    assert "vox1_dev_wav.zip: not joined, parts missing: vox1_dev_wav_partab, vox1_dev_wav_partac, " \
           "vox1_dev_wav_partad" in capsys.readouterr().out
    for suffix in "bcd":
        (tmp_path / f"vox1_dev_wav_parta{suffix}").write_bytes(b"voxceleb")
    assert dataprep.main(["--extract", "--save_path", str(tmp_path)]) == 2
    assert "vox1_dev_wav.zip: checksum failed (MD5 " in capsys.readouterr().err
    assert not (tmp_path / "vox1_dev_wav.zip").exists() and (tmp_path / "vox1_dev_wav.zip.corrupt").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_extract_refuses_members_outside_the_folder(tmp_path, kind, capsys):
    if kind == "zip":
        make_zip(tmp_path / "evil.zip", {"../evil.txt": b"x"})
    else:
        make_tar(tmp_path / "evil.tar.gz", {"../evil.txt": b"x"})
    assert dataprep.main(["--extract", "--save_path", str(tmp_path)]) == 2
    assert "outside" in capsys.readouterr().err
    assert not (tmp_path.parent / "evil.txt").exists()


def test_extract_without_archives_is_an_error(tmp_path):
    with pytest.raises(SpeakerNetError, match="no .zip"):
        prep_voxceleb.extract(str(tmp_path))
    with pytest.raises(SpeakerNetError, match="folder not found"):
        prep_voxceleb.extract(str(tmp_path / "missing"))


def test_ffmpeg_command():
    assert prep_voxceleb.ffmpeg_command("ffmpeg", "a/b.m4a", "a/.b.wav.tmp") == [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", "a/b.m4a", "-vn", "-ac", "1",
        "-ar", "16000", "-acodec", "pcm_s16le", "-f", "wav", "a/.b.wav.tmp"]


FAKE_FFMPEG = """#!{python}
import sys
import numpy as np
import soundfile as sf
args = sys.argv[1:]
source, target = args[args.index("-i") + 1], args[-1]
assert args[args.index("-ar") + 1] == "16000" and args[args.index("-ac") + 1] == "1" and "pcm_s16le" in args
if "broken" in source:
    sys.stderr.write("Invalid data found when processing input\\n")
    sys.exit(1)
sf.write(target, np.full(1600, 7, dtype=np.int16), 16000, subtype="PCM_16", format="WAV")
"""


def test_convert_runs_ffmpeg_in_parallel_skips_converted_files_and_reports_failures(tmp_path, monkeypatch):
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "ffmpeg").write_text(FAKE_FFMPEG.format(python=sys.executable))
    (tools / "ffmpeg").chmod(0o755)
    monkeypatch.setenv("PATH", str(tools))
    root = tmp_path / "data" / "voxceleb2"
    for name in ("id1/v/1", "id1/v/2", "id2/w/1"):
        (root / f"{name}.m4a").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.m4a").write_bytes(b"m4a")
    write_wav(root / "id2/w/1.wav", np.ones(10))                                    # already converted
    assert prep_voxceleb.convert(str(tmp_path / "data"), workers=2) == (2, 1)
    assert sf.read(root / "id1/v/2.wav", dtype="int16")[0].tolist() == [7] * 1600
    assert sf.info(str(root / "id2/w/1.wav")).frames == 10                          # untouched
    assert not list(root.rglob("*.tmp"))
    (root / "id3/x").mkdir(parents=True)
    (root / "id3/x/broken.m4a").write_bytes(b"??")
    with pytest.raises(SpeakerNetError, match=r"1 of 1 files failed:\n  .*broken.m4a: ffmpeg exit status 1: "
                                              r"Invalid data"):
        prep_voxceleb.convert(str(tmp_path / "data"), workers=2)
    assert not (root / "id3/x/broken.wav").exists()


def test_convert_without_ffmpeg_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (tmp_path / "voxceleb2" / "id1" / "v").mkdir(parents=True)
    (tmp_path / "voxceleb2" / "id1" / "v" / "1.m4a").write_bytes(b"m4a")
    assert dataprep.main(["--convert", "--save_path", str(tmp_path)]) == 2
    assert "no ffmpeg on PATH" in capsys.readouterr().err
    (tmp_path / "empty_save").mkdir()
    with pytest.raises(SpeakerNetError, match="no .m4a files"):
        prep_voxceleb.convert(str(tmp_path / "empty_save"), 1)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed: real conversion not tested")
def test_convert_a_real_m4a(tmp_path):
    source = tmp_path / "voxceleb2" / "id1" / "v" / "1.wav"
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((44100, 2)) * 3000).astype(np.int16)
    source.parent.mkdir(parents=True)
    sf.write(str(tmp_path / "in.wav"), stereo, 44100, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tmp_path / "in.wav"), "-c:a", "aac",
                    str(source.with_suffix(".m4a"))], check=True)
    assert prep_voxceleb.convert(str(tmp_path), workers=1) == (1, 0)
    info = sf.info(str(source))
    assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
    assert abs(info.frames - 16000) < 2000


def test_make_list_writes_a_sorted_training_list(tmp_path, capsys):
    root = tmp_path / "voxceleb2"
    for name in ("id00002/vid/00001", "id00001/vidB/00001", "id00001/vidA/00002", "id00001/vidA/00001"):
        write_wav(root / f"{name}.wav", np.ones(400))
    write_wav(root / "stray.wav", np.ones(400))                          # not speaker/video/utt: ignored
    write_wav(root / "id00003" / "a" / "b" / "c.wav", np.ones(400))
    (root / "id00002" / "vid" / "00002.m4a").write_bytes(b"m4a")      # not converted: listed as it is
    (root / "id00002" / "vid" / "00001.m4a").write_bytes(b"m4a")      # converted: its wav is listed
    (root / "id00002" / "vid" / "notes.txt").write_text("not audio")
    assert dataprep.main(["--make_list", "--save_path", str(tmp_path)]) == 0
    lines = (tmp_path / "train_list.txt").read_text().splitlines()
    assert lines == ["id00001 id00001/vidA/00001.wav", "id00001 id00001/vidA/00002.wav",
                     "id00001 id00001/vidB/00001.wav", "id00002 id00002/vid/00001.wav",
                     "id00002 id00002/vid/00002.m4a"]
    assert "2 audio files not at speaker/video/utterance depth ignored" in capsys.readouterr().out
    parsed = read_train_list(str(tmp_path / "train_list.txt"), str(root))
    assert parsed.speakers == ["id00001", "id00002"] and all(os.path.isfile(path) for path in parsed.files)
    out = tmp_path / "lists" / "mine.txt"
    with pytest.raises(SpeakerNetError, match="no audio files"):
        prep_voxceleb.make_list(str(root / "id00001" / "vidA"), str(out))
    with pytest.raises(SpeakerNetError, match="folder not found"):
        prep_voxceleb.make_list(str(tmp_path / "missing"), str(out))


def make_musan(root):
    rng = np.random.default_rng(0)
    sources = {"noise/free-sound/noise-0001": 12.0, "speech/librivox/speech-0001": 3.0,
               "music/jamendo/music-0001": 5.0}
    audio = {}
    for name, seconds in sources.items():
        audio[name] = (rng.standard_normal(int(seconds * 16000)) * 2000).astype(np.int16)
        write_wav(root / "musan" / f"{name}.wav", audio[name])
    return audio


def test_musan_is_cut_into_5_s_segments_every_3_s(tmp_path):
    audio = make_musan(tmp_path)
    assert prep_voxceleb.split_musan(str(tmp_path), workers=1) == 5
    split = tmp_path / "musan_split"
    noise = sorted(p.name for p in (split / "noise/free-sound/noise-0001").iterdir())
    assert noise == ["00000.wav", "00003.wav", "00006.wav"]
    segment, _ = sf.read(split / "noise/free-sound/noise-0001/00003.wav", dtype="int16")
    assert np.array_equal(segment, audio["noise/free-sound/noise-0001"][48000:128000])
    short, _ = sf.read(split / "speech/librivox/speech-0001/00000.wav", dtype="int16")
    assert np.array_equal(short, audio["speech/librivox/speech-0001"])           # shorter than 5 s: kept whole
    assert sf.info(str(split / "music/jamendo/music-0001/00000.wav")).frames == 80000
    assert prep_voxceleb.split_musan(str(tmp_path), workers=1) == 0               # again: nothing to redo
    Augmenter(str(split), str(tmp_path), 50, types=("noise", "speech", "music"))  # what training reads


def test_musan_and_rirs_from_their_archives_through_dataprep(tmp_path):
    staging = tmp_path / "staging"
    audio = make_musan(staging)
    with tarfile.open(tmp_path / "musan.tar.gz", "w:gz") as handle:
        handle.add(staging / "musan", arcname="musan")
    rir = wav_bytes(np.r_[30000, np.zeros(99)])
    make_zip(tmp_path / "rirs_noises.zip", {
        "RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav": rir,
        "RIRS_NOISES/simulated_rirs/mediumroom/Room002/Room002-00001.wav": rir,
        "RIRS_NOISES/real_rirs_isotropic_noises/air_type1.wav": rir,
        "RIRS_NOISES/pointsource_noises/noise-1.wav": rir})
    assert dataprep.main(["--augment", "--save_path", str(tmp_path), "--workers", "2"]) == 0
    assert len(list((tmp_path / "musan_split").rglob("*.wav"))) == 5
    simulated = tmp_path / "RIRS_NOISES" / "simulated_rirs"
    assert sorted(p.name for p in simulated.rglob("*.wav")) == ["Room001-00001.wav", "Room002-00001.wav"]
    assert not (tmp_path / "RIRS_NOISES" / "real_rirs_isotropic_noises").exists()
    assert not (tmp_path / "RIRS_NOISES" / "pointsource_noises").exists()
    augmenter = Augmenter(str(tmp_path / "musan_split"), str(simulated), 50)
    wave = np.random.default_rng(0).standard_normal(8240).astype(np.float32) * 1000
    assert augmenter.reverberate(wave, np.random.default_rng(0)).shape == wave.shape
    assert len(audio) == 3


def test_missing_augmentation_sources_are_clear_errors(tmp_path, capsys):
    assert dataprep.main(["--musan", "--save_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "neither" in err and "musan.tar.gz" in err
    with pytest.raises(SpeakerNetError, match="musan.tar.gz"):
        prep_voxceleb.split_musan(str(tmp_path), 1)
    with pytest.raises(SpeakerNetError, match="rirs_noises.zip not found"):
        prep_voxceleb.extract_rirs(str(tmp_path))
    make_zip(tmp_path / "rirs_noises.zip", {"RIRS_NOISES/pointsource_noises/noise-1.wav": b"x"})
    with pytest.raises(SpeakerNetError, match="holds no RIRS_NOISES/simulated_rirs"):
        prep_voxceleb.extract_rirs(str(tmp_path))


def test_nothing_requested_still_asks_for_a_step():
    with pytest.raises(SystemExit):
        prep_voxceleb.main([])

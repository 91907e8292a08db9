#!/usr/bin/env python
"""VoxCeleb, MUSAN and RIR preparation: the steps of voxceleb_trainer's ``dataprep.py``, reached through
``dataprep.py`` (or this file) with ``--save_path DIR`` and one or more of:

``--download``
    Fetches what the command's other steps need (:mod:`spknet.data.download`): VoxCeleb1/2 from
    ``--voxceleb_url`` (or the ``--voxceleb_list`` file) with ``--user`` / ``--password``, MUSAN and the RIRs
    (with ``--augment``, ``--musan``, ``--rirs``) from OpenSLR or ``--mirror``; partial files are resumed and every
    file's MD5 is checked against the published one.
``--extract``
    Joins split archives (``vox1_dev_wav_partaa..ad`` -> ``vox1_dev_wav.zip``, ``vox2_dev_aac_parta*`` ->
    ``vox2_dev_aac.zip``; a published archive once all its parts are there, its MD5 checked, as ``--download``
    does), unpacks every ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` in ``--save_path`` into it (except the
    augmentation archives, see ``--augment``), then moves ``wav/`` to ``voxceleb1/`` and ``dev/aac/`` and ``aac/``
    into ``voxceleb2/``. An archive already unpacked is skipped.
``--convert``
    Converts every ``.m4a`` under ``--save_path/voxceleb2`` (or ``--save_path`` when that folder does not exist)
    into a 16 kHz mono 16-bit ``.wav`` beside it, with ``ffmpeg``, ``--workers`` files at a time; files already
    converted are skipped.
``--make_list``
    Writes the training list ``<speaker> <speaker>/<video>/<utt>.wav`` (sorted) of the tree
    ``--list_root`` (default ``--save_path/voxceleb2``) to ``--list_file`` (default ``--save_path/train_list.txt``).
``--musan``
    Cuts MUSAN (``--save_path/musan``, unpacked from ``musan.tar.gz`` when needed) into 5-s segments every 3 s in
    ``--save_path/musan_split`` (what ``--musan_path`` of training expects); files shorter than 5 s are kept whole.
``--rirs``
    Unpacks ``RIRS_NOISES/simulated_rirs`` from ``--save_path/rirs_noises.zip`` (``--rir_path`` of training).
``--augment``
    ``--musan`` and ``--rirs``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import get_context

import numpy as np
import soundfile as sf

from spknet import atomic
from spknet.constants import SAMPLE_RATE
from spknet.data import download
from spknet.errors import SpeakerNetError
from spknet.files import shortened

SEGMENT_SECONDS, HOP_SECONDS = 5, 3
STEPS = ("download", "extract", "convert", "make_list", "musan", "rirs")
AUGMENTATION_ARCHIVES = ("musan.tar.gz", "rirs_noises.zip")
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The preparation flags (``--save_path`` and ``--workers`` come from the caller's parser)."""
    group = parser.add_argument_group("VoxCeleb / MUSAN / RIR preparation")
    add = group.add_argument
    add("--download", action="store_true", help="fetch VoxCeleb (--voxceleb_url or --voxceleb_list) and, with "
                                                "--augment/--musan/--rirs, MUSAN and the RIRs; MD5s checked")
    add("--extract", action="store_true", help="join split archives and unpack the archives in --save_path")
    add("--convert", action="store_true", help="m4a -> 16 kHz mono wav with ffmpeg (--workers at a time)")
    add("--make_list", action="store_true", help="write the training list of --list_root")
    add("--list_root", type=str, default=None, help="--make_list: tree speaker/video/utt.wav "
                                                    "(default: SAVE_PATH/voxceleb2)")
    add("--list_file", type=str, default=None, help="--make_list: output (default: SAVE_PATH/train_list.txt)")
    add("--augment", action="store_true", help="--musan and --rirs")
    add("--musan", action="store_true", help="cut MUSAN into 5-s segments in SAVE_PATH/musan_split")
    add("--rirs", action="store_true", help="unpack RIRS_NOISES/simulated_rirs from SAVE_PATH/rirs_noises.zip")
    download.add_arguments(group)


def requested(args) -> bool:
    return any(getattr(args, step, False) for step in STEPS + ("augment",))


def run(args) -> int:
    """Run the requested steps in order; a :class:`SpeakerNetError` is printed and gives status 2."""
    try:
        save_path = args.save_path
        if args.download:
            download.run(args)
        if args.extract:
            extract(save_path)
        if args.convert:
            convert(save_path, args.workers)
        if args.make_list:
            make_list(args.list_root or os.path.join(save_path, "voxceleb2"),
                      args.list_file or os.path.join(save_path, "train_list.txt"))
        if args.musan or args.augment:
            split_musan(save_path, args.workers)
        if args.rirs or args.augment:
            extract_rirs(save_path)
    except SpeakerNetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------------------------------
# --extract
# ----------------------------------------------------------------------------------------------------------------

def _require_folder(save_path: str) -> None:
    if not os.path.isdir(save_path):
        raise SpeakerNetError(f"--save_path {save_path}: folder not found")


def _inside(root: str, name: str) -> bool:
    root = os.path.realpath(root)
    return os.path.realpath(os.path.join(root, name)).startswith(root + os.sep)


def unpack(archive: str, destination: str, members_under: str = "") -> int:
    """Unpack ``archive`` (zip or tar) into ``destination``, only the members under ``members_under`` when given;
    a member that would land outside ``destination`` is an error. Returns the number of files unpacked."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                members = [m for m in handle.infolist() if m.filename.startswith(members_under)]
                for member in members:
                    if not _inside(destination, member.filename):
                        raise SpeakerNetError(f"{archive}: member {member.filename!r} would be written outside "
                                              f"{destination}")
                for member in members:
                    existing = os.path.join(destination, member.filename)
                    if not member.is_dir() and os.path.isfile(existing) and \
                            os.path.getsize(existing) == member.file_size:
                        continue            # unpacked by an earlier run
                    handle.extract(member, destination)
                return sum(not member.is_dir() for member in members)
        with tarfile.open(archive) as handle:
            members = [m for m in handle.getmembers() if m.name.startswith(members_under)]
            for member in members:
                if not _inside(destination, member.name) or member.issym() or member.islnk():
                    raise SpeakerNetError(f"{archive}: member {member.name!r} is a link or would be written "
                                          f"outside {destination}")
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            handle.extractall(destination, members=members, **extra)
            return sum(member.isfile() for member in members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        raise SpeakerNetError(f"{archive}: cannot unpack ({error})") from None


def _merge_into(source: str, target: str) -> None:
    """Move the contents of folder ``source`` into ``target`` (created if needed); ``source`` goes away when
    everything moved (an entry that exists in both as a file stays where it is)."""
    if not os.path.exists(target):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        os.rename(source, target)
        return
    for name in os.listdir(source):
        src, dst = os.path.join(source, name), os.path.join(target, name)
        if not os.path.exists(dst):
            os.rename(src, dst)
        elif os.path.isdir(src) and os.path.isdir(dst):
            _merge_into(src, dst)
    if not os.listdir(source):
        os.rmdir(source)


def extract(save_path: str) -> None:
    _require_folder(save_path)
    download.join_parts(save_path)
    archives = [name for name in sorted(os.listdir(save_path))
                if name.endswith((".zip", ".tar", ".tar.gz", ".tgz")) and name not in AUGMENTATION_ARCHIVES
                and os.path.isfile(os.path.join(save_path, name))]
    if not archives:
        raise SpeakerNetError(f"--extract: no .zip, .tar, .tar.gz or .tgz archives in {save_path} (with --download "
                              f"you can fetch them)")
    for name in archives:
        stamp = os.path.join(save_path, f".{name}.extracted")
        if os.path.exists(stamp):
            print(f"{name}: already unpacked (remove {stamp} to unpack again)")
            continue
        count = unpack(os.path.join(save_path, name), save_path)
        open(stamp, "w").close()
        print(f"{name}: {count} files unpacked")
    # the archives' layouts: VoxCeleb1 wav/idNNNNN/..., VoxCeleb2 dev/aac/idNNNNN/... (dev) and aac/... (test)
    for source, target in (("wav", "voxceleb1"), (os.path.join("dev", "aac"), "voxceleb2"), ("aac", "voxceleb2")):
        if os.path.isdir(os.path.join(save_path, source)):
            _merge_into(os.path.join(save_path, source), os.path.join(save_path, target))
            print(f"{os.path.join(save_path, source)} -> {os.path.join(save_path, target)}")
    dev = os.path.join(save_path, "dev")
    if os.path.isdir(dev) and not os.listdir(dev):
        os.rmdir(dev)


# ----------------------------------------------------------------------------------------------------------------
# --convert
# ----------------------------------------------------------------------------------------------------------------

def ffmpeg_command(ffmpeg: str, source: str, target: str) -> list[str]:
    """16 kHz, mono, 16-bit PCM WAV (written to ``target``, which need not end in .wav)."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", source, "-vn", "-ac", "1",
            "-ar", str(SAMPLE_RATE), "-acodec", "pcm_s16le", "-f", "wav", target]


def _convert_one(ffmpeg: str, source: str) -> str | None:
    """None on success, else the reason."""
    try:
        with atomic.atomic_path(os.path.splitext(source)[0] + ".wav", durable=False) as temporary:
            result = subprocess.run(ffmpeg_command(ffmpeg, source, temporary), capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0 or not os.path.getsize(temporary):
                lines = (result.stderr or "").strip().splitlines()
                raise _Failed(f"ffmpeg exit status {result.returncode}" + (f": {lines[-1]}" if lines else ""))
    except _Failed as failure:
        return str(failure)
    except OSError as error:
        return str(error)
    return None


class _Failed(Exception):
    """A conversion that ffmpeg did not complete (the temporary file goes, the target is not written)."""


def convert(save_path: str, workers: int) -> tuple[int, int]:
    """Convert the .m4a files below ``save_path/voxceleb2`` (or ``save_path``); returns (converted, skipped)."""
    _require_folder(save_path)
    root = os.path.join(save_path, "voxceleb2")
    root = root if os.path.isdir(root) else save_path
    sources = sorted(os.path.join(folder, name) for folder, _, names in os.walk(root)
                     for name in names if name.endswith(".m4a"))
    if not sources:
        raise SpeakerNetError(f"--convert: no .m4a files under {root}")
    pending = [source for source in sources if not os.path.exists(os.path.splitext(source)[0] + ".wav")]
    skipped = len(sources) - len(pending)
    if pending:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise SpeakerNetError(f"--convert needs ffmpeg to decode {len(pending)} .m4a files, and there is no "
                                  f"ffmpeg on PATH: install it (e.g. 'apt-get install ffmpeg') and run again")
        print(f"converting {len(pending)} .m4a files under {root} with {workers} worker(s)"
              f"{f' ({skipped} already converted)' if skipped else ''}")
        failures = []
        with ThreadPoolExecutor(max(1, workers)) as pool:          # each task is an ffmpeg process
            for number, (source, reason) in enumerate(zip(pending, pool.map(lambda s: _convert_one(ffmpeg, s),
                                                                             pending)), start=1):
                if reason:
                    failures.append(f"{source}: {reason}")
                if number % 1000 == 0:
                    print(f"  {number}/{len(pending)}")
        if failures:
            named = shortened(failures, separator="\n  ")
            raise SpeakerNetError(f"--convert: {len(failures)} of {len(pending)} files failed:\n  {named}")
    print(f"converted {len(pending)}, skipped {skipped} already converted")
    return len(pending), skipped


# ----------------------------------------------------------------------------------------------------------------
# --make_list
# ----------------------------------------------------------------------------------------------------------------

# What --make_list lists, in order of preference when an utterance has several (after --convert, its wav)
LIST_EXTENSIONS = (".wav", ".flac", ".m4a", ".aac", ".ogg", ".opus", ".mp3")


def make_list(root: str, list_file: str) -> int:
    """``<speaker> <speaker>/<video>/<utt>.<ext>`` per utterance of ``root`` at that depth, sorted: its wav, else
    its audio file of another :data:`LIST_EXTENSIONS` format (VoxCeleb2's m4a, unconverted). Returns the count."""
    if not os.path.isdir(root):
        raise SpeakerNetError(f"--make_list: {root}: folder not found (expected speaker/video/utterance.wav)")
    chosen: dict[str, tuple[int, str]] = {}     # utterance path without extension -> (preference, listed file)
    ignored = 0
    for folder, _, names in os.walk(root):
        for name in names:
            extension = os.path.splitext(name)[1].lower()
            if extension not in LIST_EXTENSIONS:
                continue
            relative = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
            if len(relative.split("/")) != 3:
                ignored += 1
                continue
            key, candidate = relative[:-len(extension)], (LIST_EXTENSIONS.index(extension), relative)
            chosen[key] = min(chosen.get(key, candidate), candidate)
    entries = [relative for _, relative in chosen.values()]
    if not entries:
        raise SpeakerNetError(f"--make_list: no audio files ({', '.join(LIST_EXTENSIONS)}) of the form "
                              f"speaker/video/utterance under {root}")
    entries.sort()
    lines = "".join(f"{path.split('/')[0]} {path}\n" for path in entries)
    os.makedirs(os.path.dirname(os.path.abspath(list_file)), exist_ok=True)
    atomic.write_text(list_file, lines, encoding="utf-8")
    speakers = len({path.split("/")[0] for path in entries})
    print(f"{list_file}: {len(entries)} utterances of {speakers} speakers (paths relative to {root})"
          + (f"; {ignored} audio files not at speaker/video/utterance depth ignored" if ignored else ""))
    return len(entries)


# ----------------------------------------------------------------------------------------------------------------
# --musan, --rirs
# ----------------------------------------------------------------------------------------------------------------

def _split_one(job: tuple[str, str]) -> int:
    """Cut one MUSAN file into segments in folder ``job[1]``; returns the segments written."""
    source, folder = job
    segment, hop = SEGMENT_SECONDS * SAMPLE_RATE, HOP_SECONDS * SAMPLE_RATE
    try:
        handle = sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise SpeakerNetError(f"{source}: cannot read audio ({error})") from None
    with handle:
        if handle.samplerate != SAMPLE_RATE:
            raise SpeakerNetError(f"{source}: sample rate {handle.samplerate} Hz, expected {SAMPLE_RATE} Hz")
        total = handle.frames
        starts = range(0, total - segment + 1, hop) if total >= segment else [0] if total > 0 else []
        os.makedirs(folder, exist_ok=True)
        written = 0
        for start in starts:
            target = os.path.join(folder, f"{start // SAMPLE_RATE:05d}.wav")
            if os.path.exists(target):
                continue
            handle.seek(start)
            audio = handle.read(segment, dtype="int16", always_2d=True)[:, 0]
            with atomic.atomic_path(target, durable=False) as temporary:
                sf.write(temporary, np.ascontiguousarray(audio), SAMPLE_RATE, subtype="PCM_16", format="WAV")
            written += 1
    return written


def split_musan(save_path: str, workers: int) -> int:
    """MUSAN -> ``save_path/musan_split``: 5-s segments every 3 s, named by start second, a folder per file."""
    _require_folder(save_path)
    musan = os.path.join(save_path, "musan")
    archive = os.path.join(save_path, "musan.tar.gz")
    if not os.path.isdir(musan):
        if not os.path.isfile(archive):
            raise SpeakerNetError(f"--musan: neither {musan} nor {archive} found (download MUSAN from "
                                  f"https://www.openslr.org/resources/17/musan.tar.gz)")
        print(f"unpacking {archive}")
        unpack(archive, save_path)
    jobs = []
    for category in ("noise", "speech", "music"):
        folder = os.path.join(musan, category)
        for directory, _, names in os.walk(folder):
            for name in sorted(names):
                if name.endswith(".wav"):
                    source = os.path.join(directory, name)
                    relative = os.path.relpath(os.path.splitext(source)[0], musan)
                    jobs.append((source, os.path.join(save_path, "musan_split", relative)))
    if not jobs:
        raise SpeakerNetError(f"--musan: no wav files in {musan}/noise, speech or music")
    jobs.sort()
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            written = sum(pool.imap_unordered(_split_one, jobs, chunksize=16))
    else:
        written = sum(map(_split_one, jobs))
    print(f"{os.path.join(save_path, 'musan_split')}: {written} segments written from {len(jobs)} MUSAN files")
    return written


def extract_rirs(save_path: str) -> int:
    """``RIRS_NOISES/simulated_rirs`` out of ``save_path/rirs_noises.zip``; returns the files unpacked."""
    _require_folder(save_path)
    archive = os.path.join(save_path, "rirs_noises.zip")
    target = os.path.join(save_path, "RIRS_NOISES", "simulated_rirs")
    if not os.path.isfile(archive):
        if os.path.isdir(target):
            print(f"{target}: already there")
            return 0
        raise SpeakerNetError(f"--rirs: {archive} not found (download it from "
                              f"https://www.openslr.org/resources/28/rirs_noises.zip)")
    count = unpack(archive, save_path, members_under="RIRS_NOISES/simulated_rirs/")
    if count == 0:
        raise SpeakerNetError(f"{archive}: holds no RIRS_NOISES/simulated_rirs/ files")
    print(f"{target}: {count} impulse responses")
    return count


# ----------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save_path", type=str, default="data", help="data folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel conversions / MUSAN files (default: %(default)s)")
    add_arguments(parser)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not requested(args):
        parser.error("nothing to do: pass one or more of --download, --extract, --convert, --make_list, "
                     "--augment, --musan, --rirs")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""Downloading the corpora: MUSAN and the simulated RIRs from OpenSLR, VoxCeleb1/2 from the addresses the user
was given on registering.

Every file is fetched into ``NAME.part`` and becomes ``NAME`` only once it is complete and its MD5 matches the
published one, so no later step (``--extract``, ``--augment``) ever takes a partial or damaged file for a whole
one. A partial ``NAME.part`` (an interrupted run, a dropped connection) is resumed with an HTTP ``Range`` request;
a server that ignores the range sends the whole file again. A file whose checksum fails is renamed
``NAME.corrupt`` and named in the error. Each file whose MD5 matched is recorded (name, size, modification time,
MD5) in the folder's ``.md5_checked``, so a later ``--download`` keeps it without reading its tens of GiB again
unless its size or time changed. VoxCeleb's split archives (``vox1_dev_wav_parta*``,
``vox2_dev_aac_parta*``) are joined into one zip whose checksum is checked too.

Addresses: MUSAN and RIRs live under OpenSLR's ``resources/`` folder; ``--mirror URL`` replaces that base by
another with the same layout (``URL/17/musan.tar.gz``). VoxCeleb's files are ``--voxceleb_url BASE`` + file name
(with ``--user`` / ``--password``, sent as HTTP basic authentication to that address only), or the ``URL [MD5]``
lines of a ``--voxceleb_list`` file; the cleaned VoxCeleb1 trial lists come from the dataset's public page.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from spknet import atomic
from spknet.errors import SpeakerNetError, exit_status, located
from spknet.files import concatenate, file_digest

OPENSLR = "https://www.openslr.org/resources"
CHUNK = 1 << 20
PART, CORRUPT = ".part", ".corrupt"
PROGRESS = 1 << 30      # a progress line per GiB
CHECKED = ".md5_checked"    # in a download folder: "NAME SIZE MTIME_NS MD5" per file whose MD5 matched


@dataclass(frozen=True)
class Entry:
    """One file to fetch: its address, the name it gets in the download folder and its published MD5 (None:
    not checked)."""
    url: str
    name: str
    md5: str | None = None


# OpenSLR's published checksums (resources/17 and resources/28, checksum.md5 of each)
AUGMENTATION = {
    "musan": ("17/musan.tar.gz", "0c472d4fc0c5141eca47ad1ffeb2a7df"),
    "rirs": ("28/rirs_noises.zip", "e6f48e257286e05de56413b4779d8ffb"),
}

# VoxCeleb's files as the dataset's site lists them, with their published MD5s
VOXCELEB_FILES = (
    ("vox1_dev_wav_partaa", "e395d020928bc15670b570a21695ed96"),
    ("vox1_dev_wav_partab", "bbfaaccefab65d82b21903e81a8a8020"),
    ("vox1_dev_wav_partac", "017d579a2a96a077f40042ec33e51512"),
    ("vox1_dev_wav_partad", "7bb1e9f70fddc7a678fa998ea8b3ba19"),
    ("vox1_test_wav.zip", "185fdc63c3c739954633d50379a3d102"),
    ("vox2_dev_aac_partaa", "da070494c573e5c0564b1d11c3b20577"),
    ("vox2_dev_aac_partab", "17fe6dab2b32b48abaf1676429cdd06f"),
    ("vox2_dev_aac_partac", "1de58e086c5edf63625af1cb6d831528"),
    ("vox2_dev_aac_partad", "5a043eb03e15c5a918ee6a52aad477f9"),
    ("vox2_dev_aac_partae", "cea401b624983e2d0b2a87fb5d59aa60"),
    ("vox2_dev_aac_partaf", "fc886d9ba90ab88e7880ee98effd6ae9"),
    ("vox2_dev_aac_partag", "d160ecc3f6ee3eed54d55349531cb42e"),
    ("vox2_dev_aac_partah", "6b84a81b9af72a9d9eecbb3b1f602e65"),
    ("vox2_test_aac.zip", "0d2b3ea430a821c33263b5ea37ede312"),
)
# the split archives joined: the MD5 of the whole and its parts, in order
JOINED = {archive: (md5, tuple(name for name, _ in VOXCELEB_FILES if name.startswith(archive[:-4] + "_part")))
          for archive, md5 in (("vox1_dev_wav.zip", "ae63e55b951748cc486645f532ba230b"),
                               ("vox2_dev_aac.zip", "bbc063c46078a602ca71605645c2a402"))}
VOXCELEB_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/voxceleb/"
# the VoxCeleb1 trial lists (cleaned Vox1-O, -E, -H), public; no checksums are published for them
TRIAL_LISTS = ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")
VOXCELEB_META = VOXCELEB_PAGE + "meta"


def add_arguments(group) -> None:
    """The download flags (``--download`` itself is the caller's)."""
    add = group.add_argument
    add("--voxceleb_url", default="", help="--download: base address of the VoxCeleb files (given on "
                                           "registering at the VoxCeleb site); each file is BASE/NAME")
    add("--voxceleb_list", default="", help="--download: a file of 'URL [MD5]' lines, the VoxCeleb files to fetch "
                                            "(instead of --voxceleb_url)")
    add("--voxceleb_meta", default=VOXCELEB_META, help="--download: base address of the VoxCeleb1 trial lists "
                                                       "(veri_test2.txt, ...; 'none': skip them; default: "
                                                       "%(default)s)")
    add("--user", default="", help="--download: user name for the VoxCeleb addresses (HTTP basic authentication)")
    add("--password", default="", help="--download: password for the VoxCeleb addresses (default: the "
                                       "VOXCELEB_PASSWORD environment variable)")
    add("--mirror", default="", help=f"--download: base address of an OpenSLR mirror for MUSAN and RIRs "
                                     f"(default: {OPENSLR})")
    add("--timeout", type=float, default=60.0, help="--download: seconds without data before a request fails "
                                                    "(default: %(default)s)")
    add("--retries", type=int, default=5, help="--download: resumptions of a dropped transfer (default: "
                                               "%(default)s)")


# ----------------------------------------------------------------------------------------------------------------
# What to fetch
# ----------------------------------------------------------------------------------------------------------------

def _name_of(url: str) -> str:
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name or name in (".", ".."):
        raise SpeakerNetError(f"{url}: the address names no file")
    return name


def augmentation_entries(which=("musan", "rirs"), mirror: str = "") -> list[Entry]:
    """MUSAN and/or the RIRs at OpenSLR (or ``mirror``, a base address with OpenSLR's layout)."""
    base = (mirror or OPENSLR).rstrip("/")
    return [Entry(f"{base}/{AUGMENTATION[key][0]}", _name_of(AUGMENTATION[key][0]), AUGMENTATION[key][1])
            for key in which]


def voxceleb_entries(base_url: str) -> list[Entry]:
    """VoxCeleb1 and 2 (the split dev archives and the test archives) under ``base_url``."""
    base = base_url.rstrip("/")
    return [Entry(f"{base}/{name}", name, md5) for name, md5 in VOXCELEB_FILES]


def trial_list_entries(base_url: str = VOXCELEB_META) -> list[Entry]:
    """The cleaned VoxCeleb1 trial lists (not checksummed: none are published) under ``base_url``."""
    return [Entry(f"{base_url.rstrip('/')}/{name}", name) for name in TRIAL_LISTS]


def read_url_list(path: str) -> list[Entry]:
    """``URL [MD5]`` per line (blank lines and ``#`` comments skipped); a known VoxCeleb file without an MD5 gets
    the published one."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SpeakerNetError(f"{path}: cannot read the download list ({error})") from None
    known = dict(VOXCELEB_FILES)
    entries = []
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2 or urllib.parse.urlsplit(fields[0]).scheme not in ("http", "https", "ftp"):
            raise located(path, number, f"expected 'URL [MD5]' with an http(s) address, got: {line!r}")
        md5 = fields[1].lower() if len(fields) == 2 else None
        if md5 is not None and (len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
            raise located(path, number, f"{fields[1]!r} is not an MD5 (32 hexadecimal digits)")
        name = _name_of(fields[0])
        entries.append(Entry(fields[0], name, md5 or known.get(name)))
    if not entries:
        raise located(path, None, "the download list names no files")
    return entries


# ----------------------------------------------------------------------------------------------------------------
# Fetching one file
# ----------------------------------------------------------------------------------------------------------------

def _checked(folder: str) -> dict[str, tuple[int, int, str]]:
    """The folder's record of checked files, {name: (size, mtime_ns, md5)}; a line that does not parse is left
    out (its file is hashed again)."""
    try:
        with open(os.path.join(folder, CHECKED), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return {}
    records = {}
    for line in lines:
        fields = line.rsplit(" ", 3)
        if len(fields) == 4 and fields[1].isdigit() and fields[2].isdigit():
            records[fields[0]] = (int(fields[1]), int(fields[2]), fields[3])
    return records


def _stamp(path: str, md5: str) -> tuple[int, int, str]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns, md5


def checked_before(path: str, md5: str) -> bool:
    """Whether ``path`` had the MD5 ``md5`` when it was last checked and has kept its size and time since."""
    folder, name = os.path.split(path)
    return _checked(folder).get(name) == _stamp(path, md5)


def record_checked(path: str, md5: str) -> None:
    """Add ``path`` (whose MD5 was just found to be ``md5``) to its folder's record, atomically."""
    folder, name = os.path.split(path)
    records = {**_checked(folder), name: _stamp(path, md5)}
    lines = [f"{key} {size} {mtime} {digest}\n" for key, (size, mtime, digest) in sorted(records.items())]
    atomic.write_text(os.path.join(folder, CHECKED), "".join(lines))


def opener_for(urls=(), user: str = "", password: str = "") -> urllib.request.OpenerDirector:
    """An opener that sends ``user``/``password`` as basic authentication with the first request to each of
    ``urls`` (and addresses below them), and to no other address."""
    if not user:
        return urllib.request.build_opener()
    manager = urllib.request.HTTPPasswordMgrWithPriorAuth()
    for url in urls:
        manager.add_password(None, url, user, password, is_authenticated=True)
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))


class _Interrupted(Exception):
    """The transfer stopped before the end (the partial file is kept for a resumption)."""


def _transfer(opener, url: str, part: str, timeout: float) -> None:
    """One request for the rest of ``part`` (a Range request when part of it is there); appends what arrives."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:          # nothing past what is there: the partial file is whole
            return
        detail = " (check --user and --password)" if error.code in (401, 403) else ""
        raise SpeakerNetError(f"{url}: HTTP {error.code} {error.reason}{detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise _Interrupted(getattr(error, "reason", error)) from None
    with response:
        resumed = response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
            os.unlink(part)                     # another range than asked: start again from the first byte
            raise _Interrupted("the server answered another byte range")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received, started = 0, time.monotonic()
        with open(part, "ab" if resumed else "wb") as out:     # a 200 answer is the whole file: start again
            try:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    received += len(block)
                    if received % PROGRESS < len(block):
                        _progress(part, received, expected, started)
            except (OSError, http.client.HTTPException) as error:
                raise _Interrupted(error) from None
    if expected is not None and received < expected:
        raise _Interrupted(f"{received} of {expected} bytes received")


def _progress(part: str, received: int, expected: int | None, started: float) -> None:
    rate = received / max(time.monotonic() - started, 1e-9) / 2**20
    total = f" of {expected / 2**30:.1f}" if expected else ""
    print(f"  {os.path.basename(part)}: {received / 2**30:.1f}{total} GiB this session ({rate:.1f} MiB/s)")


def fetch(entry: Entry, folder: str, opener=None, timeout: float = 60.0, retries: int = 5) -> str:
    """``folder/entry.name``, downloaded (resuming ``.part``) and checked; a whole file already there with the
    right checksum is kept. A failed checksum renames the file ``.corrupt`` and raises an error naming it."""
    opener = opener or urllib.request.build_opener()
    target = os.path.join(folder, entry.name)
    part = target + PART
    if os.path.isfile(target):
        if entry.md5 is not None and checked_before(target, entry.md5):
            print(f"{target}: already downloaded (MD5 checked before; size and time unchanged)")
            return target
        if entry.md5 is None or file_digest(target, "md5") == entry.md5:
            if entry.md5 is not None:
                record_checked(target, entry.md5)
            print(f"{target}: already downloaded" + (", MD5 checked" if entry.md5 else ""))
            return target
        os.replace(target, target + CORRUPT)
        print(f"{target}: checksum does not match, set aside as {target + CORRUPT}; downloading again")
    os.makedirs(folder, exist_ok=True)
    print(f"downloading {entry.url} -> {target}"
          + (f" (resuming after {os.path.getsize(part)} bytes)" if os.path.exists(part) else ""))
    for attempt in range(retries + 1):
        try:
            _transfer(opener, entry.url, part, timeout)
            break
        except _Interrupted as error:
            if attempt == retries:
                raise SpeakerNetError(f"{entry.url}: transfer interrupted ({error}) after {retries + 1} attempt(s); "
                                      f"{part} holds {os.path.getsize(part) if os.path.exists(part) else 0} bytes "
                                      f"and is resumed by the next --download") from None
            print(f"  {entry.name}: interrupted ({error}); resuming")
    return _accept(part, target, entry.md5, entry.url)


def _accept(part: str, target: str, md5: str | None, source: str) -> str:
    """``part`` becomes ``target`` when its MD5 is ``md5`` (or none is published); else it is set aside as
    ``target.corrupt`` and the error names it."""
    if md5 is not None:
        found = file_digest(part, "md5")
        if found != md5:
            _set_aside(part, target, found, md5, source, "run --download again to fetch it anew")
    os.replace(part, target)
    return _complete(target, md5)


def _set_aside(path: str, target: str, found: str, md5: str, source: str, hint: str) -> None:
    os.replace(path, target + CORRUPT)
    raise SpeakerNetError(f"{target}: checksum failed (MD5 {found}, published {md5}; from {source}); the file was "
                          f"set aside as {target + CORRUPT}; {hint}")


def _complete(target: str, md5: str | None) -> str:
    if md5 is not None:
        record_checked(target, md5)
    print(f"{target}: complete" + (", MD5 checked" if md5 else " (no published MD5 to check)"))
    return target


SPLIT = re.compile(r"^(?P<stem>.+)_part[a-z]{2}$")


def split_archives(folder: str, joined: dict | None = None) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """The split archives whose parts are in ``folder``, ``{archive: (md5, parts)}``: each published one
    (:data:`JOINED`, or ``joined``) with its MD5 and all its parts, and any other ``STEM_partXX`` files as
    ``STEM.zip`` of the parts there, in name order, with no MD5 to check."""
    published = JOINED if joined is None else joined
    present: dict[str, list[str]] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = SPLIT.match(name)
        if match and os.path.isfile(os.path.join(folder, name)):
            present.setdefault(match["stem"] + ".zip", []).append(name)
    return {archive: published.get(archive, (None, tuple(names))) for archive, names in present.items()}


def join_parts(folder: str, joined: dict | None = None) -> list[str]:
    """Join the split archives of ``folder`` (:func:`split_archives`; ``STEM_partaa``, ``STEM_partab``, ... ->
    ``STEM.zip``) that are not joined yet, once all their parts are there, checking a published archive's MD5 as
    the parts are copied; returns the archives written. A joined archive whose MD5 fails is set aside as
    ``.corrupt`` and the error names it."""
    written = []
    for archive, (md5, parts) in split_archives(folder, joined).items():
        target = os.path.join(folder, archive)
        if os.path.exists(target):
            continue
        missing = [name for name in parts if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            print(f"{archive}: not joined, parts missing: {', '.join(missing)}")
            continue
        print(f"joining {', '.join(parts)} -> {target}")
        atomic.remove_leftovers(target)             # a join killed part-way leaves a temporary as big as the parts
        with atomic.atomic_path(target) as temporary:
            with open(temporary, "wb") as out:
                found = concatenate([os.path.join(folder, name) for name in parts], out, "md5")
            if md5 is not None and found != md5:
                _set_aside(temporary, target, found, md5, " + ".join(parts),
                           f"check each part's MD5 (--download does): is one of another release? (To use the "
                           f"joined file all the same, rename it {archive})")
        written.append(_complete(target, md5))
    return written


# ----------------------------------------------------------------------------------------------------------------
# The --download step
# ----------------------------------------------------------------------------------------------------------------

def nothing_to_fetch() -> str:
    return (f"--download: nothing to fetch. Give what to download:\n"
            f"  VoxCeleb1/2: --voxceleb_url BASE (with --user/--password), or --voxceleb_list FILE of 'URL [MD5]' "
            f"lines; the addresses and credentials come with registering at {VOXCELEB_PAGE}\n"
            f"  MUSAN and RIRs (OpenSLR, public): --augment (or --musan / --rirs), optionally --mirror URL")


def planned(args) -> list[tuple[list[Entry], object]]:
    """The files ``args`` ask for, each group with its opener (credentials only for the VoxCeleb addresses)."""
    groups = []
    if args.voxceleb_list or args.voxceleb_url:
        entries = read_url_list(args.voxceleb_list) if args.voxceleb_list else voxceleb_entries(args.voxceleb_url)
        password = args.password or os.environ.get("VOXCELEB_PASSWORD", "")
        groups.append((entries, opener_for([entry.url for entry in entries], args.user, password)))
        if args.voxceleb_meta != "none":
            groups.append((trial_list_entries(args.voxceleb_meta), urllib.request.build_opener()))
    which = [key for key, flag in (("musan", args.musan), ("rirs", args.rirs)) if flag or args.augment]
    if which:
        groups.append((augmentation_entries(which, args.mirror), urllib.request.build_opener()))
    return groups


def run(args) -> list[str]:
    """Fetch everything ``args`` ask for into ``args.save_path`` (not the parts of an archive already joined),
    then join VoxCeleb's split archives; returns the files there."""
    groups = planned(args)
    if not groups:
        raise SpeakerNetError(nothing_to_fetch())
    if args.retries < 0 or not args.timeout > 0:
        raise SpeakerNetError(f"--retries {args.retries} / --timeout {args.timeout}: need retries >= 0 and a "
                              f"timeout > 0")
    joined = {part for archive, (_, parts) in JOINED.items()
              if os.path.isfile(os.path.join(args.save_path, archive)) for part in parts}
    fetched = [fetch(entry, args.save_path, opener, args.timeout, args.retries)
               for entries, opener in groups for entry in entries if entry.name not in joined]
    return fetched + join_parts(args.save_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save_path", default="data", help="download folder (default: %(default)s)")
    for flag in ("--augment", "--musan", "--rirs"):
        parser.add_argument(flag, action="store_true", help="fetch MUSAN and/or the RIRs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return exit_status(run, args)


if __name__ == "__main__":
    sys.exit(main())

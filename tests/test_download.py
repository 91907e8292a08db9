"""Downloads (spknet.data.download, dataprep.py --download) against a real HTTP server on 127.0.0.1 started by
the test: whole files, resumed transfers (HTTP Range), corrupt files, the mirror option, basic authentication.
No test reaches any other address: a guard refuses connections elsewhere."""

import base64
import hashlib
import io
import os
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

import dataprep
from spknet.data import download
from spknet.errors import SpeakerNetError


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class Server:
    """Serves the files of ``root`` with Range support; ``drop`` makes the first N answers stop half-way,
    ``corrupt`` flips a byte of every answer, ``credentials`` (user, password) are required under ``/vox/``."""

    def __init__(self, root):
        self.root, self.drop, self.corrupt, self.credentials = str(root), 0, False, None
        self.requests = []          # (path, Range header, Authorization header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                if server.credentials and self.path.startswith("/vox/"):
                    expected = "Basic " + base64.b64encode(":".join(server.credentials).encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="vox"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                path = os.path.join(server.root, self.path.lstrip("/"))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                data = open(path, "rb").read()
                if server.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                asked = self.headers.get("Range")
                if asked:
                    start = int(asked.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop:
                    server.drop -= 1
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def put(self, relative: str, data: bytes) -> str:
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
        return f"{self.base}/{relative}"


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """Any connection to another address than 127.0.0.1 fails the test."""
    connect = socket.create_connection

    def guarded(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"connection to {address} attempted"
        return connect(address, *args, **kwargs)
    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.fixture
def server(tmp_path):
    served = Server(tmp_path / "served")
    os.makedirs(served.root)
    served.thread.start()
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


PAYLOAD = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8).tobytes()   # 3 MiB: several blocks


def test_a_whole_download_has_the_published_md5(server, tmp_path, monkeypatch, capsys):
    url = server.put("files/data.bin", PAYLOAD)
    monkeypatch.setattr(download, "PROGRESS", 1 << 20)           # a progress line per MiB
    path = download.fetch(download.Entry(url, "data.bin", md5(PAYLOAD)), str(tmp_path / "out"))
    assert path == str(tmp_path / "out" / "data.bin")
    assert open(path, "rb").read() == PAYLOAD
    assert sorted(os.listdir(tmp_path / "out")) == [download.CHECKED, "data.bin"]
    assert capsys.readouterr().out.count("GiB this session") == 3
    # a second fetch keeps the checked file and asks nothing of the server
    requests = len(server.requests)
    download.fetch(download.Entry(url, "data.bin", md5(PAYLOAD)), str(tmp_path / "out"))
    assert len(server.requests) == requests


def test_a_checked_file_is_not_read_again_until_it_changes(server, tmp_path, monkeypatch, capsys):
    url = server.put("files/data.bin", PAYLOAD)
    entry, out = download.Entry(url, "data.bin", md5(PAYLOAD)), tmp_path / "out"
    download.fetch(entry, str(out))
    hashed = []
    real_digest = download.file_digest

    def counted(path, algorithm):
        hashed.append(path)
        return real_digest(path, algorithm)

    monkeypatch.setattr(download, "file_digest", counted)
    capsys.readouterr()
    download.fetch(entry, str(out))
    assert hashed == [] and "MD5 checked before" in capsys.readouterr().out
    # a file touched since (another size or time) is hashed again; a damaged one is then set aside and fetched anew
    target = out / "data.bin"
    os.utime(target, ns=(0, 0))
    download.fetch(entry, str(out))
    assert hashed == [str(target)]
    with open(target, "r+b") as handle:
        handle.write(b"\0")
    download.fetch(entry, str(out))
    assert (out / "data.bin.corrupt").is_file() and open(target, "rb").read() == PAYLOAD
    # a record line that does not parse only costs a hash
    (out / download.CHECKED).write_text("data.bin not numbers\n")
    hashed.clear()
    download.fetch(entry, str(out))
    assert hashed == [str(target)] and download.checked_before(str(target), md5(PAYLOAD))


def test_a_dropped_transfer_is_resumed_with_range(server, tmp_path):
    out = tmp_path / "out"
    url = server.put("files/data.bin", PAYLOAD)
    entry = download.Entry(url, "data.bin", md5(PAYLOAD))
    server.drop = 1
    path = download.fetch(entry, str(out), retries=1)
    assert md5(open(path, "rb").read()) == md5(PAYLOAD)
    (first, first_range, _), (_, second_range, _) = server.requests
    assert first_range is None and second_range == f"bytes={len(PAYLOAD) // 2}-"


def test_an_interrupted_run_leaves_a_part_file_the_next_run_resumes(server, tmp_path):
    out = tmp_path / "out"
    url = server.put("files/data.bin", PAYLOAD)
    entry = download.Entry(url, "data.bin", md5(PAYLOAD))
    server.drop = 1
    with pytest.raises(SpeakerNetError, match="interrupted") as error:
        download.fetch(entry, str(out), retries=0)
    assert "data.bin.part" in str(error.value)
    assert sorted(os.listdir(out)) == ["data.bin.part"]            # never the final name
    assert os.path.getsize(out / "data.bin.part") == len(PAYLOAD) // 2
    path = download.fetch(entry, str(out), retries=0)
    assert server.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"
    assert open(path, "rb").read() == PAYLOAD
    assert sorted(os.listdir(out)) == [download.CHECKED, "data.bin"]


def test_a_corrupt_file_is_named_and_set_aside(server, tmp_path):
    out = tmp_path / "out"
    url = server.put("files/data.bin", PAYLOAD)
    server.corrupt = True
    with pytest.raises(SpeakerNetError, match="checksum failed") as error:
        download.fetch(download.Entry(url, "data.bin", md5(PAYLOAD)), str(out))
    assert str(out / "data.bin") in str(error.value) and md5(PAYLOAD) in str(error.value)
    assert os.listdir(out) == ["data.bin.corrupt"]
    # the next run fetches it anew (from the first byte, not resuming the bad bytes)
    server.corrupt = False
    download.fetch(download.Entry(url, "data.bin", md5(PAYLOAD)), str(out))
    assert server.requests[-1][1] is None
    assert open(out / "data.bin", "rb").read() == PAYLOAD


def test_a_file_without_a_published_checksum_is_accepted(server, tmp_path):
    out = tmp_path / "out"
    url = server.put("meta/veri_test2.txt", b"1 a.wav b.wav\n")
    download.fetch(download.Entry(url, "veri_test2.txt"), str(out))
    assert open(out / "veri_test2.txt", "rb").read() == b"1 a.wav b.wav\n"


def wav(seconds: float) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(int(seconds * 16000), dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def test_mirror_serves_musan_and_rirs_and_augment_unpacks_them(server, tmp_path, monkeypatch):
    import tarfile
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:gz") as handle:
        data = wav(6.0)
        info = tarfile.TarInfo("musan/noise/free-sound/noise-0001.wav")
        info.size = len(data)
        handle.addfile(info, io.BytesIO(data))
    musan = tar.getvalue()
    rirs = zip_bytes({"RIRS_NOISES/simulated_rirs/smallroom/Room001/Room001-00001.wav": wav(0.5)})
    server.put("resources/17/musan.tar.gz", musan)
    server.put("resources/28/rirs_noises.zip", rirs)
    monkeypatch.setattr(download, "AUGMENTATION", {"musan": ("17/musan.tar.gz", md5(musan)),
                                                   "rirs": ("28/rirs_noises.zip", md5(rirs))})
    save = tmp_path / "data"
    assert dataprep.main(["--save_path", str(save), "--download", "--augment", "--workers", "1",
                          "--mirror", f"{server.base}/resources/"]) == 0
    assert {path for path, _, _ in server.requests} == {"/resources/17/musan.tar.gz", "/resources/28/rirs_noises.zip"}
    assert sorted(os.listdir(save / "musan_split" / "noise" / "free-sound" / "noise-0001")) == ["00000.wav"]
    assert os.path.isfile(save / "RIRS_NOISES" / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav")


def test_the_openslr_addresses_and_the_mirror():
    musan, rirs = download.augmentation_entries()
    assert musan == download.Entry("https://www.openslr.org/resources/17/musan.tar.gz", "musan.tar.gz",
                                   "0c472d4fc0c5141eca47ad1ffeb2a7df")
    assert rirs.url == "https://www.openslr.org/resources/28/rirs_noises.zip" and rirs.md5
    (mirrored,) = download.augmentation_entries(["rirs"], mirror="https://example.org/slr/")
    assert mirrored.url == "https://example.org/slr/28/rirs_noises.zip" and mirrored.md5 == rirs.md5


def voxceleb_split(server, monkeypatch):
    """A VoxCeleb1 dev zip split in two parts, served under /vox/, with the joined MD5 patched in."""
    whole = zip_bytes({"wav/id10001/abc/00001.wav": wav(1.0), "wav/id10002/def/00001.wav": wav(1.0)})
    half = len(whole) // 2
    parts = {"vox1_dev_wav_partaa": whole[:half], "vox1_dev_wav_partab": whole[half:]}
    lines = "".join(f"{server.put('vox/' + name, data)} {md5(data)}\n" for name, data in parts.items())
    monkeypatch.setattr(download, "JOINED", {"vox1_dev_wav.zip": (md5(whole), tuple(parts))})
    return lines


def test_voxceleb_credentials_are_sent_and_parts_joined_and_extracted(server, tmp_path, monkeypatch):
    server.credentials = ("alice", "s3cret")
    listing = tmp_path / "vox.txt"
    listing.write_text("# VoxCeleb1\n" + voxceleb_split(server, monkeypatch))
    server.put("meta/veri_test2.txt", b"1 id10001/abc/00001.wav id10001/abc/00001.wav\n")
    server.put("meta/list_test_all2.txt", b"")
    server.put("meta/list_test_hard2.txt", b"")
    save = tmp_path / "data"
    assert dataprep.main(["--save_path", str(save), "--download", "--extract", "--voxceleb_list", str(listing),
                          "--user", "alice", "--password", "s3cret", "--voxceleb_meta", f"{server.base}/meta"]) == 0
    sent = base64.b64encode(b"alice:s3cret").decode()
    vox = [authorization for path, _, authorization in server.requests if path.startswith("/vox/")]
    meta = [authorization for path, _, authorization in server.requests if path.startswith("/meta/")]
    assert vox == [f"Basic {sent}"] * 2                 # sent with the first request, no 401 round trip
    assert meta == [None] * 3                           # the credentials go to the VoxCeleb addresses only
    assert os.path.isfile(save / "vox1_dev_wav.zip") and os.path.isfile(save / "veri_test2.txt")
    assert os.path.isfile(save / "voxceleb1" / "id10002" / "def" / "00001.wav")
    # the parts of an archive already joined are not fetched again, even once removed to save space
    for name in ("vox1_dev_wav_partaa", "vox1_dev_wav_partab"):
        os.unlink(save / name)
    requests = len(server.requests)
    assert dataprep.main(["--save_path", str(save), "--download", "--voxceleb_list", str(listing),
                          "--user", "alice", "--password", "s3cret", "--voxceleb_meta", "none"]) == 0
    assert len(server.requests) == requests


def test_wrong_credentials_are_an_error_naming_them(server, tmp_path, monkeypatch, capsys):
    server.credentials = ("alice", "s3cret")
    listing = tmp_path / "vox.txt"
    listing.write_text(voxceleb_split(server, monkeypatch))
    assert dataprep.main(["--save_path", str(tmp_path / "data"), "--download", "--voxceleb_list", str(listing),
                          "--user", "alice", "--password", "wrong", "--voxceleb_meta", "none"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "--password" in err and "vox1_dev_wav_partaa" in err


def test_voxceleb_url_names_every_published_file(server, tmp_path):
    entries = download.voxceleb_entries(f"{server.base}/vox/")
    assert [entry.url for entry in entries][:1] == [f"{server.base}/vox/vox1_dev_wav_partaa"]
    assert len(entries) == 14 and all(len(entry.md5) == 32 for entry in entries)
    assert {entry.name for entry in entries} >= {"vox1_test_wav.zip", "vox2_test_aac.zip", "vox2_dev_aac_partah"}


def test_a_bad_download_list_line_is_named(tmp_path):
    listing = tmp_path / "vox.txt"
    listing.write_text("http://127.0.0.1/vox1_test_wav.zip\nnot-a-url abc\n")
    with pytest.raises(SpeakerNetError, match=r"vox.txt:2: expected 'URL \[MD5\]'"):
        download.read_url_list(str(listing))
    listing.write_text("http://127.0.0.1/x.zip 1234\n")
    with pytest.raises(SpeakerNetError, match=r"vox.txt:1: '1234' is not an MD5"):
        download.read_url_list(str(listing))
    listing.write_text("http://127.0.0.1/a/vox1_test_wav.zip\n")     # a known file gets its published MD5
    assert download.read_url_list(str(listing))[0].md5 == "185fdc63c3c739954633d50379a3d102"


def test_download_without_anything_to_fetch_says_what_to_give(tmp_path, capsys):
    assert dataprep.main(["--download", "--save_path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--voxceleb_url" in err and "--augment" in err and "network" not in err
    assert os.listdir(tmp_path) == []


def test_split_archives_are_joined_once_every_part_is_there_and_checked(tmp_path, capsys):
    whole = PAYLOAD[:3000]
    joined = {"vox1_dev_wav.zip": (md5(whole), ("vox1_dev_wav_partaa", "vox1_dev_wav_partab"))}
    (tmp_path / "vox1_dev_wav_partaa").write_bytes(whole[:1000])
    assert download.join_parts(str(tmp_path), joined) == []
    assert "parts missing: vox1_dev_wav_partab" in capsys.readouterr().out
    (tmp_path / "vox1_dev_wav_partab").write_bytes(whole[1000:] + b"x")           # a damaged part
    with pytest.raises(SpeakerNetError, match=r"vox1_dev_wav.zip: checksum failed .*vox1_dev_wav.zip.corrupt"):
        download.join_parts(str(tmp_path), joined)
    assert not (tmp_path / "vox1_dev_wav.zip").exists()
    (tmp_path / "vox1_dev_wav_partab").write_bytes(whole[1000:])
    (tmp_path / ".vox1_dev_wav.zip.k1ll3d_9.tmp").write_bytes(whole[:10])       # left by a join killed part-way
    assert download.join_parts(str(tmp_path), joined) == [str(tmp_path / "vox1_dev_wav.zip")]
    assert (tmp_path / "vox1_dev_wav.zip").read_bytes() == whole
    assert download.checked_before(str(tmp_path / "vox1_dev_wav.zip"), md5(whole))   # recorded: not hashed again
    assert sorted(os.listdir(tmp_path)) == [download.CHECKED, "vox1_dev_wav.zip", "vox1_dev_wav.zip.corrupt",
                                            "vox1_dev_wav_partaa", "vox1_dev_wav_partab"]
    assert download.join_parts(str(tmp_path), joined) == []                          # joined once


def test_parts_of_an_unpublished_archive_are_joined_in_name_order_without_a_checksum(tmp_path, capsys):
    for suffix, data in (("ab", b"world"), ("aa", b"hello ")):
        (tmp_path / f"own_corpus_part{suffix}").write_bytes(data)
    assert download.join_parts(str(tmp_path)) == [str(tmp_path / "own_corpus.zip")]
    assert (tmp_path / "own_corpus.zip").read_bytes() == b"hello world"
    assert "own_corpus.zip: complete (no published MD5 to check)" in capsys.readouterr().out
    assert not (tmp_path / download.CHECKED).exists()


def test_the_published_split_archives():
    assert download.JOINED["vox2_dev_aac.zip"][1] == tuple(f"vox2_dev_aac_parta{c}" for c in "abcdefgh")
    assert download.JOINED["vox1_dev_wav.zip"][1] == tuple(f"vox1_dev_wav_parta{c}" for c in "abcd")

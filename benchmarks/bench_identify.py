"""Open-set identification at scale: one 4-s file against 1,000 to 1,000,000 enrolled speakers, and enrolment.

Each size gets a ``(speakers, dim)`` matrix of random unit vectors (what :meth:`spknet.speakers.SpeakerDB.matrix`
holds after reading the database once), searched the way ``inference.py identify`` searches it: the file's
embedding times the matrix (one product, :class:`spknet.speakers.Scorer`) and the top ``--top_k``, in float32 and
in float16. The reference, in the same process, is the same search written as a loop over speakers (one cosine
per speaker, then a full sort), run on the smallest size only and scaled to the others. Printed per size and
precision: the median latency of the search alone and with the file's embedding, the matrix's memory, and the
ratio to the reference.

Enrolment throughput: ``--enrol_files`` 3-s wav files of noise enrolled through :meth:`SpeakerDB.enroll_many`
(embedding included) into a new database, and ``--db_speakers`` precomputed embeddings written with
:meth:`SpeakerDB.enroll_embeddings` and read back as the search matrix (the cost of opening a large database).

    python -m benchmarks.bench_identify                      # one thread, 1e3 / 1e5 / 1e6 speakers, 512-d
    python -m benchmarks.bench_identify --sizes 1000,100000 --dim 256 --threads 2
"""

import argparse
import functools
import os
import statistics
import tempfile
import time

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

from spknet import SAMPLE_RATE
from spknet.inference import load_embedder
from spknet.model import SpeakerNet
from spknet.speakers import Scorer, SpeakerDB


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000,1000000", help="enrolled speakers, comma-separated")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (ResNetSE34L's nOut 512)")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one core)")
    parser.add_argument("--enrol_files", type=int, default=24, help="files enrolled through the model")
    parser.add_argument("--db_speakers", type=int, default=100000, help="speakers written to and read from SQLite")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def median_seconds(function, repeats: int) -> float:
    function()                                                  # warm-up: allocations, kernel choice
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def top_speakers(scorer: Scorer, vector: torch.Tensor, means: torch.Tensor, top_k: int):
    """What identify does with the matrix: one product, then the top ``top_k``."""
    return torch.topk(scorer.against(vector, means), top_k, dim=1)


def reference_search(vector: torch.Tensor, means: torch.Tensor, top_k: int) -> list[int]:
    """One cosine per speaker in a loop, then a full sort: identification written without the matrix product."""
    scores = [float(F.cosine_similarity(vector, mean, dim=0)) for mean in means]
    return list(np.argsort(scores)[::-1][:top_k])


def write_noise(folder: str, count: int, seconds: float, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = os.path.join(folder, f"file{index:04d}.wav")
        audio = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 3000).clip(-32768, 32767).astype(np.int16)
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "model.model")
        torch.save(SpeakerNet.build("ResNetSE34L", "softmaxproto", nOut=args.dim, nSpeakers=10).state_dict(),
                   checkpoint)
        embedder = load_embedder(checkpoint, device="cpu", scoring="cosine", calibration=None)
        (probe,) = write_noise(folder, 1, 4.0, args.seed)
        db = SpeakerDB(os.path.join(folder, "probe.db"), embedder, create=True)
        embed_seconds = median_seconds(lambda: db.embed([probe]), max(3, args.repeats // 2))
        vector = db.embed([probe])
        print(f"threads {torch.get_num_threads()}, dim {args.dim}, top {args.top_k}; embedding the 4-s file: "
              f"{1000 * embed_seconds:.1f} ms")
        print("| speakers | precision | matrix MiB | search ms | with embedding ms | reference ms | ratio |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        reference_per_speaker = None
        scorer = Scorer(None)
        for size in sizes:
            means32 = F.normalize(torch.randn(size, args.dim), dim=1)
            if reference_per_speaker is None:
                count = min(size, 1000)
                loop = functools.partial(reference_search, vector[0], means32[:count], args.top_k)
                reference_per_speaker = median_seconds(loop, 3) / count
            for dtype in (torch.float32, torch.float16):
                means = means32.to(dtype)
                search = functools.partial(top_speakers, scorer, vector, means, args.top_k)
                if dtype == torch.float32 and size <= 1000:
                    found = search().indices[0].tolist()
                    assert found == reference_search(vector[0], means32, args.top_k), "search differs from loop"
                seconds = median_seconds(search, args.repeats)
                reference = reference_per_speaker * size
                mib = means.element_size() * means.numel() / 2 ** 20
                print(f"| {size:,} | {str(dtype).split('.')[-1]} | {mib:.0f} | {1000 * seconds:.2f} | "
                      f"{1000 * (seconds + embed_seconds):.1f} | {1000 * reference:.0f} | "
                      f"{reference / seconds:.0f}x |")
        db.close()
        enrolment(args, embedder, folder)


def enrolment(args, embedder, folder: str) -> None:
    files = write_noise(folder, args.enrol_files, 3.0, args.seed + 1)
    groups = {f"speaker{index:03d}": files[index::8] for index in range(8)}
    with SpeakerDB(os.path.join(folder, "enrol.db"), embedder, create=True) as db:
        start = time.perf_counter()
        db.enroll_many(groups)
        seconds = time.perf_counter() - start
    print(f"enrolment through the model: {args.enrol_files} 3-s files in {seconds:.2f} s "
          f"({args.enrol_files / seconds:.1f} files/s, embedding included)")
    count = args.db_speakers
    vectors = F.normalize(torch.randn(count, args.dim), dim=1)
    with SpeakerDB(os.path.join(folder, "large.db"), embedder, create=True) as db:
        start = time.perf_counter()
        db.enroll_embeddings({f"s{index:07d}": [f"s{index:07d}.wav"] for index in range(count)}, vectors)
        written = time.perf_counter() - start
    with SpeakerDB(os.path.join(folder, "large.db"), embedder) as db:
        start = time.perf_counter()
        names, means = db.matrix()
        read = time.perf_counter() - start
    assert len(names) == count and torch.allclose(means, vectors, atol=1e-6)
    size = os.path.getsize(os.path.join(folder, "large.db")) / 2 ** 20
    print(f"SQLite: {count:,} speakers written in {written:.1f} s ({count / written:,.0f} speakers/s, one "
          f"transaction), read back as the search matrix in {read:.2f} s; database {size:.0f} MiB")


if __name__ == "__main__":
    main()

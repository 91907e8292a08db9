"""Training files that cannot be read: the run stops on the first with one error naming it, or (``--max_bad_files
N``) skips up to N of them, each warned about once and listed in ``result/bad_files.txt``.

The loader's workers never fail on a bad file: the dataset hands the group back marked
(:class:`~spknet.data.Unreadable`) and :func:`~spknet.data.collate_readable` leaves it out of its batch, so the
decision is taken here, in the main process, with the count of the whole run (per rank under torch.distributed).
A skipped group is dropped from its batch, not replaced: the batch is one group smaller for that step.
"""

import os

from spknet import atomic, distributed
from spknet.errors import SpeakerNetError
from spknet.logs import log

BAD_FILES = "bad_files.txt"         # in the run's result/ folder: '<name>\t<why>' per skipped file


class BadFiles:
    """The unreadable files met so far (name -> why), the limit, and the names met in the current epoch."""

    def __init__(self, limit: int, result_dir: str):
        self.limit, self.path = limit, os.path.join(result_dir, BAD_FILES)
        self.files: dict[str, str] = {}
        self.this_epoch: set[str] = set()

    def load(self) -> None:
        """The files a resumed run skipped before (they count against the limit again, once each)."""
        if os.path.isfile(self.path):
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    name, _, reason = line.rstrip("\n").partition("\t")
                    if name:
                        self.files[name] = reason

    def start_epoch(self) -> None:
        self.this_epoch = set()

    def record(self, unreadable) -> None:
        """Skip these :class:`~spknet.data.Unreadable` utterances, or stop the run on the first one past the
        limit with an error naming it and saying how to go on."""
        for item in unreadable:
            self.this_epoch.add(item.name)
            if item.name in self.files:
                continue
            if len(self.files) >= self.limit:
                raise SpeakerNetError(self._stop_message(item))
            self.files[item.name] = item.reason
            log.warning(f"skipping unreadable training file {item.name} ({len(self.files)} of --max_bad_files "
                        f"{self.limit}): {item.reason}")
            if distributed.is_main():
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                atomic.write_text(self.path, "".join(f"{name}\t{why}\n" for name, why in self.files.items()))

    def _stop_message(self, item) -> str:
        if self.limit == 0:
            return (f"training file {item.name} cannot be read: {item.reason}; fix it or take it out of the "
                    f"training data, or give --max_bad_files N to skip up to N such files")
        return (f"training file {item.name} cannot be read: {item.reason}; that is one more than --max_bad_files "
                f"{self.limit} (those skipped are in {self.path}); raise --max_bad_files or fix the data")

    def batches(self, loader) -> "CheckedBatches":
        """``loader`` (batches of :func:`~spknet.data.collate_readable`) as the trainer takes it: ``(waves,
        labels, sizes)``, its unreadable groups recorded here first."""
        return CheckedBatches(loader, self)


class CheckedBatches:
    """The training loader's batches with their unreadable groups recorded (see :meth:`BadFiles.batches`)."""

    def __init__(self, loader, bad_files: BadFiles):
        self.loader, self.bad_files = loader, bad_files

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for waves, labels, sizes, *unreadable in self.loader:     # a shard stream's batches have no such list
            if unreadable and unreadable[0]:
                self.bad_files.record(unreadable[0])
            yield waves, labels, sizes

"""`segtune predict` under several processes (torchrun, `accelerate launch`): which process does
what, and the per-rank records that rank 0 merges into the one predictions.jsonl.

Each process takes every N-th image still to do and logs to predictions.rank<r>.jsonl; only
barriers pass between processes. The records' reading (`read_records`) is shared with a single
process's resume.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

from ..errors import SegtuneError

RANK_FILES = "predictions.rank*.jsonl"  # each process's records, under torchrun / accelerate launch
WAIT_LIMIT = timedelta(hours=24)  # how long a rank that is done waits for the others (gloo's default: 30 min)


def record_key(label_path) -> str:
    return str(Path(label_path).resolve())


def read_records(path: Path) -> dict[str, dict]:
    """Earlier predictions.jsonl lines by label map (resolved path); the last line wins."""
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[record_key(record["label_map"])] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by a crash: that image is done again
    return records


def process_rank() -> tuple[int, int]:
    """(rank, number of processes): the process group's if one exists, else RANK and WORLD_SIZE as
    torchrun and `accelerate launch` set them; (0, 1) for a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def use_local_gpu(device) -> None:
    """Under several processes, `--device auto` (or `cuda`) on a CUDA machine is the GPU of the
    process's LOCAL_RANK: each process of a machine gets its own (torch.cuda.set_device)."""
    import torch

    _, size = process_rank()
    if size > 1 and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())


class Processes:
    """The processes of one prediction run. With several (WORLD_SIZE > 1), a gloo process group is
    opened unless one exists; only barriers pass through it, so gloo serves CUDA runs as well, with
    no device to bind. With one process, barriers do nothing."""

    def __init__(self):
        import torch.distributed as dist

        self.rank, self.size = process_rank()
        self.opened = False
        if self.size > 1 and not (dist.is_available() and dist.is_initialized()):
            if not dist.is_available():
                raise SegtuneError(f"WORLD_SIZE={self.size}: this torch build has no torch.distributed; "
                                   "run a single process")
            dist.init_process_group("gloo", timeout=WAIT_LIMIT)
            self.opened = True

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Waits for every rank (rank 0's last writes), then tears down a group opened here (as
        train.close_process_group does: a rank leaving early can abort gloo's destructor)."""
        import torch.distributed as dist

        self.barrier()
        if self.opened and dist.is_initialized():
            dist.destroy_process_group()


def rank_file(output_dir: Path, rank: int) -> Path:
    return output_dir / RANK_FILES.replace("*", str(rank))


def fold_rank_files(output_dir: Path, jsonl: Path, discard: bool) -> None:
    """Appends the per-rank records left by a run cut short under several processes to predictions.jsonl
    (their images count as done), then removes the rank files; `discard` (--overwrite) only removes them."""
    parts = sorted(output_dir.glob(RANK_FILES))
    if parts and not discard:
        with open(jsonl, "ab") as log:
            for part in parts:
                _end_line(log, jsonl)
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, log)
            _end_line(log, jsonl)
    for part in parts:
        part.unlink()


def _end_line(log, path: Path) -> None:
    """Ends a line cut short by a crash before more is appended: it stays one bad line (skipped)."""
    log.flush()
    if log.tell():
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                log.write(b"\n")


def take_rank_records(records: dict, todo: list, paths: dict, output_dir: Path, size: int) -> None:
    """The records of this run's images, by name, from the rank files (image i of `todo` was rank i % size's)."""
    logged = {rank: read_records(rank_file(output_dir, rank)) for rank in range(size)}
    for i, e in enumerate(todo):
        record = logged[i % size].get(record_key(paths[e.name]["label_map"]))
        if record is None:
            raise SegtuneError(f"{rank_file(output_dir, i % size)}: no record of {e.path}; run again to segment it")
        records[e.name] = record

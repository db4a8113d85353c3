"""Prompt file -> validated items -> one video + sidecar each, resumable, crash-safe and sharded.

    items = plan_batch("prompts.yaml", out_dir="outputs/run1", overrides={"model": "tiny"})
    report = run_batch(items, "outputs/run1")

Planning validates the whole file before any model is loaded. Problems with the file itself
(unknown fields, sizes, frame counts) stop the batch; problems with what an item points at (a
missing concept file, a model that cannot be loaded) fail that item alone, and the batch goes on.

An item is finished when its sidecar exists, names its video, which exists, and records exactly
the requested settings and concept file hashes: render_to_file writes the video and then the
sidecar, each under a temporary name renamed when complete, so a killed run never leaves an item
that looks finished. Rerunning the same command renders only what is not finished; a changed
setting changes the request and re-renders just those items.

One batch process owns an output folder at a time (an OS file lock, released by the kernel even
on SIGKILL): a second one is refused with a message. Under `accelerate launch` the processes of one
launch share the folder: process 0 holds the lock, and every process renders its own share.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from cdvideo.config import RANDOM_SEED, RenderSettings
from cdvideo.errors import CdVideoError, ConfigError, OutputLockedError
from cdvideo.files import slugify
from cdvideo.manifest import ManifestPart, merge_manifest, remove_parts
from cdvideo.outputs import BATCH_LOCK_NAME, check_batch_folder
from cdvideo.prompts import Problems, Request, read_prompt_file
from cdvideo.sidecar import finished_render

LOCK_NAME = BATCH_LOCK_NAME
# Settings a batched pipeline call may differ in; everything else must be equal.
PER_VIDEO_FIELDS = ("prompt", "negative_prompt", "seed")


@dataclass
class BatchItem:
    """One video of a batch, planned."""

    index: int
    source: str  # file and line/entry it came from
    settings: RenderSettings  # resolved: model defaults filled in, seed drawn where random
    name: str  # output file stem: index, slug of the prompt (or entry name), seed
    random_seed: bool = False  # the file asked for a random seed (then resume ignores the seed)
    error: str | None = None  # known before rendering: this item fails alone

    @property
    def video_name(self) -> str:
        format = self.settings.format or "mp4"
        return self.name if format == "frames" else f"{self.name}.{format}"


def item_name(index: int, request: Request, seed: int, random_seed: bool) -> str:
    """`0007-a-dog-running-on-the-beach-42`: sorted by index, readable, nothing from the prompt but [a-z0-9-]."""
    return f"{index:04d}-{slugify(request.name or request.fields['prompt'], limit=48)}-{'rand' if random_seed else seed}"


def plan_batch(prompt_file: str | os.PathLike, overrides: dict[str, Any] | None = None,
               seeds: list[int] | None = None, concepts: Any = None) -> list[BatchItem]:
    """Read, expand and validate a prompt file; no model is loaded.

    `overrides` are RenderSettings fields from the command line and win over the file;
    `seeds` / `concepts` replace every entry's own.
    """
    from cdvideo.models import load_preset, locate
    from cdvideo.render import check_inputs, resolve_settings

    requests = read_prompt_file(prompt_file, seeds, concepts)
    problems = Problems(Path(prompt_file))
    presets: dict[str, Any] = {}  # model -> preset, or the error loading it
    located: dict[tuple, Any] = {}  # (model, motion adapter) -> its ModelFiles, worked out once
    available: dict[tuple, str | None] = {}  # (model, motion adapter) -> why it cannot be had
    items = []
    for index, request in enumerate(requests):
        fields = {**request.fields, **(overrides or {})}
        random_seed = fields.get("seed") in (None, RANDOM_SEED)
        if random_seed:
            fields["seed"] = random.SystemRandom().randrange(0, 2**63)
        try:
            settings = RenderSettings.from_dict(fields, request.source)
        except ConfigError as error:
            problems.add(request.source, str(error).removeprefix(f"{request.source}: "))
            continue
        error = request.unsupported
        if settings.model not in presets:
            try:
                presets[settings.model] = load_preset(settings.model)
            except CdVideoError as failure:
                presets[settings.model] = failure
        preset = presets[settings.model]
        if isinstance(preset, CdVideoError):
            error = error or f"model {settings.model}: {preset}"
        else:
            settings = resolve_settings(settings, preset)
            key = (settings.model, settings.motion_adapter)
            files = located.setdefault(key, locate(preset, settings.motion_adapter))
            try:
                check_inputs(settings, files)
            except ConfigError as failure:  # the file asks for something impossible: fix the file
                problems.add(request.source, str(failure))
                continue
            except CdVideoError as failure:  # a missing concept, LoRA or motion file: this item only
                error = error or str(failure)
            if key not in available:
                try:
                    files.check_available()
                    available[key] = None
                except CdVideoError as failure:
                    available[key] = str(failure)
            error = error or available[key] or _memory_problem(settings, files)
        name = item_name(index, request, settings.seed, random_seed)
        items.append(BatchItem(index, request.source, settings, name, random_seed, error))
    problems.raise_if_any()
    return items


def _memory_problem(settings: RenderSettings, files) -> str | None:
    """render's peak-memory check, per item and before any model loads: an item that cannot fit fails
    alone (in its row), instead of loading the model to die of it."""
    from cdvideo.memory import NotEnoughMemoryError, check_memory
    from cdvideo.models import resolve_device, resolve_dtype

    device = resolve_device(settings.device)
    try:
        check_memory(settings, files, device, resolve_dtype(settings.dtype, device))
    except NotEnoughMemoryError as failure:
        return str(failure)
    return None


def finished_sidecar(item: BatchItem, out_dir: Path, hashes: dict[str, str] | None = None) -> dict | None:
    """The sidecar of `item` if its finished outputs match the request exactly, else None."""
    if item.error:
        return None
    # A random seed was drawn anew for this run: the finished video's own seed stands.
    ignore = ("seed",) if item.random_seed else ()
    return finished_render(out_dir / item.video_name, item.settings.to_dict(), ignore, hashes)


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold the output folder's lock; refuse at once if another batch holds it."""
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputLockedError(
                f"{out_dir} is in use by another cdvideo batch ({holder}): wait for it to finish, "
                "or give another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def remove_leftovers(out_dir: Path) -> None:
    """Temporary files of a killed run (never counted as finished) and the last run's manifest parts."""
    for path in out_dir.glob(".*.partial*"):
        if path.is_dir():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    remove_parts(out_dir)


def group_items(items: list[BatchItem], batch_size: int) -> list[list[BatchItem]]:
    """Consecutive runs of items sharing every setting but prompt, negative prompt and seed, at most `batch_size` long.

    Groups are ordered by model so that each process loads each model once.
    """
    def shared(item: BatchItem) -> str:
        data = {k: v for k, v in item.settings.to_dict().items() if k not in PER_VIDEO_FIELDS}
        return json.dumps(data, sort_keys=True)

    by_settings: dict[str, list[BatchItem]] = {}
    for item in items:
        by_settings.setdefault(shared(item), []).append(item)
    groups = []
    for members in by_settings.values():
        for start in range(0, len(members), max(1, batch_size)):
            groups.append(members[start:start + max(1, batch_size)])
    return sorted(groups, key=lambda g: (_model_key(g[0].settings), g[0].index))


def _model_key(settings: RenderSettings) -> tuple:
    return (settings.model, settings.motion_adapter or "", settings.device, settings.dtype)


@dataclass
class BatchReport:
    records: list[dict[str, Any]]  # the manifest, in item order
    seconds: float
    load_seconds: float = 0.0
    rendered: int = 0  # items this process rendered

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)

    @property
    def ok(self) -> bool:
        return all(r["status"] in ("done", "skipped") for r in self.records)


def _record(item: BatchItem, status: str, process: int, **extra: Any) -> dict[str, Any]:
    return {
        "index": item.index,
        "name": item.name,
        "source": item.source,
        "status": status,
        "prompt": item.settings.prompt,
        "negative_prompt": item.settings.negative_prompt,
        "seed": item.settings.seed,
        "random_seed": item.random_seed,
        "concepts": [{"path": c.path, "strength": c.strength} for c in item.settings.concepts],
        # Relative to the manifest's folder; where the video is, or would be once rendered.
        "video": item.video_name,
        "sidecar": f"{item.name}.json",
        "timings": {},
        "error": None,
        "process": process,
        **extra,
    }


def _process_state():
    """accelerate's view of this process (a plain run is process 0 of 1)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, which containers and `taskset` narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def share_cpu_threads(state) -> int | None:
    """On a CPU run of several processes, give this one its share of the cores as torch's thread count.

    Each process would otherwise start a thread per core, and N processes on C cores run N x C threads
    that take turns (a Shapes clip took 180 s instead of ~2 s while other work shared the cores; issue 19).
    A single process keeps them all. Returns the threads set, or None where nothing changed."""
    if state.num_processes <= 1 or state.device.type != "cpu":
        return None
    import torch

    threads = max(1, cpu_cores() // state.num_processes)
    torch.set_num_threads(threads)
    return threads


def _broadcast(state, value):
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if not isinstance(error, CdVideoError) else text


def run_batch(items: list[BatchItem], out_dir: str | os.PathLike, *, batch_size: int = 1, renderer=None,
              progress: bool = True, gallery: bool = True) -> BatchReport:
    """Render every unfinished item; returns the merged manifest (complete on process 0).

    `renderer` (a cdvideo.render.Renderer) is used for every item instead of loading models;
    `gallery` writes contact_sheet.png and index.html at the end.
    """
    out_dir = Path(out_dir)
    state = _process_state()
    rank, world = state.process_index, state.num_processes
    share_cpu_threads(state)
    started = time.perf_counter()
    refusal = None
    with contextlib.ExitStack() as stack:
        # 1. Own the folder: process 0 takes the lock, and every process learns whether it got it.
        if rank == 0:
            check_batch_folder(out_dir)  # never a user's folder of other files
            try:
                stack.enter_context(output_lock(out_dir))
                remove_leftovers(out_dir)
            except OutputLockedError as error:
                refusal = str(error)
        refusal = _broadcast(state, refusal)
        if refusal:
            raise OutputLockedError(refusal)
        state.wait_for_everyone()

        # 2. What is finished, failed or to do; every process must see the same before anyone writes.
        part = ManifestPart(out_dir, rank)
        stack.callback(part.close)
        hashes: dict[str, str] = {}
        pending = []
        for item in items:
            sidecar = None if item.error else finished_sidecar(item, out_dir, hashes)
            if item.error and rank == 0:
                part.add(_record(item, "failed", rank, error=item.error))
            elif sidecar is not None and rank == 0:
                part.add(_record(item, "skipped", rank, seed=sidecar["settings"]["seed"],
                                 timings=sidecar.get("timings", {})))
            elif not item.error and sidecar is None:
                pending.append(item)
        state.wait_for_everyone()

        # 3. Render this process's share, group by group.
        placeholders = [_record(item, "pending", rank) for item in items]
        groups = group_items(pending, batch_size)[rank::world]
        runner = _Runner(renderer, state, progress)
        bar = _progress_bar(sum(len(g) for g in groups), rank, world, progress)
        completed = False
        try:
            for group in groups:
                for record in runner.render_group(group, out_dir):
                    part.add(record)
                    bar.update(1)
                if rank == 0 and world == 1:
                    merge_manifest(out_dir, placeholders)  # keep the manifest current as we go
            completed = True
        finally:
            bar.close()
            if not completed and rank == 0:
                merge_manifest(out_dir, placeholders)  # interrupted: record how far it got
        part.close()
        state.wait_for_everyone()

        # 4. Process 0 merges every process's records into the manifest.
        records = merge_manifest(out_dir, placeholders) if rank == 0 else placeholders
        if rank == 0:
            remove_parts(out_dir)
            if gallery:
                from cdvideo.gallery import write_contact_sheet, write_index_html

                write_contact_sheet(out_dir, records)
                write_index_html(out_dir, records)
        report = BatchReport(records, time.perf_counter() - started, runner.load_seconds, runner.rendered)
    return report


def _progress_bar(total: int, rank: int, world: int, enabled: bool):
    from tqdm import tqdm

    desc = "items" if world == 1 else f"items (process {rank})"
    return tqdm(total=total, desc=desc, unit="video", position=rank, disable=not enabled, leave=world == 1)


class _Runner:
    """Renders groups of items with one loaded model at a time; a failure is recorded, never raised."""

    def __init__(self, renderer, state, progress: bool):
        self.fixed = renderer
        self.state = state
        self.progress = progress
        self.loaded: tuple[tuple, Any] | None = None  # (model key, Renderer or the error loading it)
        self.load_seconds = 0.0
        self.rendered = 0

    def renderer_for(self, settings: RenderSettings):
        if self.fixed is not None:
            return self.fixed
        key = _model_key(settings)
        if self.loaded is None or self.loaded[0] != key:
            from cdvideo.models import load_preset
            from cdvideo.render import Renderer

            self.loaded = None  # let the previous model go before the next one loads
            started = time.perf_counter()
            try:
                loaded = Renderer(load_preset(settings.model), self._device(settings.device), settings.dtype,
                                  settings.motion_adapter)
            except (CdVideoError, OSError, RuntimeError, ValueError) as error:
                loaded = error
            self.load_seconds += time.perf_counter() - started
            self.loaded = (key, loaded)
        if isinstance(self.loaded[1], BaseException):
            raise self.loaded[1]
        return self.loaded[1]

    def _device(self, device: str) -> str:
        """Under accelerate each process renders on its own GPU."""
        if self.state.num_processes > 1 and device in ("auto", "cuda") and self.state.device.type == "cuda":
            return f"cuda:{self.state.device.index or 0}"
        return device

    def render_group(self, group: list[BatchItem], out_dir: Path) -> list[dict[str, Any]]:
        if len(group) > 1:
            try:
                return self._render_together(group, out_dir)
            except (CdVideoError, OSError, RuntimeError, ValueError):
                pass  # out of memory, say: each item on its own records its own error
        return [self._render_one(item, out_dir) for item in group]

    def _render_one(self, item: BatchItem, out_dir: Path, frames=None, render_s: float | None = None,
                    batched: int = 1) -> dict[str, Any]:
        """Render `item` (or write `frames`, its share of a batched call) with its video and sidecar."""
        from cdvideo.render import prepare_render, render_to_file, write_render

        rank = self.state.process_index
        try:
            renderer = self.renderer_for(item.settings)
            out = out_dir / item.video_name
            if frames is None:
                result = render_to_file(item.settings, out, renderer=renderer, progress=False)
            else:
                started = time.perf_counter()
                request = prepare_render(item.settings, out, renderer.preset)
                for message in request.messages:
                    warnings.warn(message, stacklevel=2)
                result = write_render(request, frames, renderer, {"render_s": render_s or 0.0}, started)
        except (CdVideoError, OSError, RuntimeError, ValueError) as error:
            if os.environ.get("CDVIDEO_DEBUG"):
                traceback.print_exc()
            return _record(item, "failed", rank, error=_short(error))
        self.rendered += 1
        timings = {k: round(v, 4) for k, v in result.timings.items()}
        if render_s is not None:
            timings["render_s"] = round(render_s, 4)  # this item's share of the batched call
        import torch

        return _record(item, "done", rank, timings=timings, batched_with=batched,
                       warnings=result.warnings or None, threads=torch.get_num_threads())

    def _render_together(self, group: list[BatchItem], out_dir: Path) -> list[dict[str, Any]]:
        from cdvideo import render

        first = group[0].settings
        renderer = self.renderer_for(first)
        concepts = render.load_concepts(first.concepts)
        applied = {"loras": render.load_loras(first.loras)} if first.loras else {}
        started = time.perf_counter()
        all_frames = renderer.render_batch([item.settings for item in group], concepts, progress=False, **applied)
        share = (time.perf_counter() - started) / len(group)
        return [self._render_one(item, out_dir, frames, share, len(group)) for item, frames in zip(group, all_frames)]


def summary_lines(report: BatchReport) -> list[str]:
    """The table printed at the end: one row per item, then the totals."""
    rows = [("#", "status", "seed", "seconds", "video / error")]
    for r in report.records:
        seconds = r.get("timings", {}).get("total_s")
        rows.append((str(r["index"]), r["status"], str(r["seed"]), f"{seconds:.1f}" if seconds else "",
                     r["error"] if r["status"] == "failed" else r["video"]))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    counts = ", ".join(f"{report.count(s)} {s}" for s in ("done", "skipped", "failed", "pending") if report.count(s))
    rate = f", {report.rendered / report.seconds:.2f} videos/s" if report.rendered and report.seconds else ""
    lines.append(f"{len(report.records)} items: {counts} in {report.seconds:.1f} s{rate}")
    return lines

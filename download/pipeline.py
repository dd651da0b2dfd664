"""``download_subset``: what ``react download`` runs."""
from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from react.errors import ReactError
from react.progress import console, progress
from react.schemas import SAFETY_DROPPED_FILE, SAFETY_DROPPED_STATUS, SHARD_SUBSET_KEY

from download.inputs import Subset, read_subset
from download.options import DownloadOptions
from download.runner import Round, run_round
from download.safety import metadata_drops, print_safety, report, without, write_record
from download.shardsdir import ShardsDir
from download.summary import print_summary, summarize
from download.survival import print_survival, survival_keys


def download_subset(subset: str | Path, out: str | Path, *, local_corpus: str | Path | None = None,
                    resume: bool = False, retry_failed: bool = False, overwrite: bool = False,
                    options: DownloadOptions | None = None) -> dict:
    """Download the subset's images into webdataset shards in ``out`` and
    return the summary (also in ``out/download.json``).

    ``resume``: keep the complete shards of an earlier run of the same subset,
    redo the missing or broken ones. ``retry_failed``: additionally re-attempt
    the rows whose latest attempt failed, into new shards after the existing
    ones. ``overwrite``: replace whatever shards ``out`` holds.
    ``local_corpus``: read the images from that folder instead of the urls."""
    opts = options or DownloadOptions()
    opts.validate()
    if overwrite and (resume or retry_failed):
        raise ReactError("--overwrite starts again; it cannot be combined with --resume or --retry-failed")
    started = time.time()
    sub = read_subset(subset, opts.keep)
    full, scorer, metadata_dropped = sub.table, None, []
    if opts.safety == "metadata":  # before img2dataset: a dropped row is never fetched
        metadata_dropped = metadata_drops(sub, opts)
        sub = without(sub, {d.key for d in metadata_dropped})
        if sub.rows == 0:
            raise ReactError(f"--safety metadata drops every row of {subset} (--max-punsafe {opts.max_punsafe:g}); "
                             "nothing to download")
    elif opts.safety == "classifier":  # a missing extra fails here, before any download
        from download.safety_classifier import load_scorer

        scorer = load_scorer(opts.safety_scorer)
    local = None
    if local_corpus is not None:
        from download.local import LocalCorpus

        local = LocalCorpus(local_corpus)
    if sub.topup is not None:
        if overwrite or resume or retry_failed:
            raise ReactError(f"{subset} is a top-up subset: it appends to {out}; --overwrite, --resume and "
                             "--retry-failed apply to the download's own subset, not to it")
        folder, todo = _open_topup(Path(out), sub, opts)
    else:
        folder, todo = _open_and_verify(Path(out), sub, opts, resume=resume, retry_failed=retry_failed,
                                        overwrite=overwrite)
    original, topups = _requested(folder, sub, opts)
    inputs = _RoundInputs(sub, local, folder)
    for other in (original, *topups):  # a retry round may hold any of their rows
        if other is not sub and other.image_paths and inputs.image_paths is not None:
            inputs.image_paths.update(zip(other.table.column(SHARD_SUBSET_KEY).to_pylist(), other.image_paths))
    verb = "reading" if local else "downloading"
    if todo:
        size = opts.shard_size
        table, cols, rewrite = inputs.prepared(sub.table, 0)
        rows = sum(min(size, sub.rows - s * size) for s in todo)
        run_round(folder, Round(0, table, 0, todo, cols, rows, rewrite, commit_each=True), opts, verb)
    if sub.topup is not None:
        if any(t["digest"] == sub.digest for t in folder.topups):
            console.print(f"{subset} is already appended to {out}: nothing to download", highlight=False)
        else:
            _topup_round(folder, sub, inputs, opts, verb)
            topups.append(sub)
    if retry_failed:
        requested = pa.concat_tables([s.table for s in (original, *topups)], promote_options="permissive")
        _retry_round(folder, requested, inputs, opts, verb)

    if scorer is not None:
        from download.safety_classifier import classify_shards

        classify_shards(folder, scorer, opts.safety_scorer, opts.max_punsafe)
    attempts = folder.attempts([SHARD_SUBSET_KEY])
    kept, attempts, safety = _safety(opts, full, sub, folder, attempts, metadata_dropped)
    # everything ever requested into the folder (the original subset and its top-ups), less what the filter dropped
    everything = pa.concat_tables([kept if s is sub else s.table for s in (original, *topups)],
                                  promote_options="permissive")
    summary = summarize(everything, attempts, opts.warn_below, {
        "shards": len(folder.shards), "rounds": len(folder.rounds), "seconds": round(time.time() - started, 1),
        "local_corpus": str(local_corpus) if local_corpus else None, "warn_below": opts.warn_below})
    summary["safety"] = safety
    ok_keys = {k for k, s in zip(attempts.column(SHARD_SUBSET_KEY).to_pylist(), attempts.column("status").to_pylist())
               if s == "success"} if attempts.num_rows else set()
    summary.update(survival_keys(original, topups, ok_keys, Path(out)))
    folder.finish(summary, opts.record())
    print_summary(summary, str(out))
    print_safety(safety)
    print_survival(summary)
    return summary


def _safety(opts: DownloadOptions, full: pa.Table, sub: Subset, folder: ShardsDir, attempts: pa.Table,
            metadata_dropped: list) -> tuple[pa.Table, pa.Table, dict]:
    """The subset rows and attempts the summary counts (those the filter kept),
    the summary's ``safety`` block, and -- filter on -- its record in the folder."""
    if opts.safety == "off":
        (folder.root / SAFETY_DROPPED_FILE).unlink(missing_ok=True)
        return sub.table, attempts, report(opts, full, sub, [], [])
    if opts.safety == "metadata":
        checked, drops = full.column(SHARD_SUBSET_KEY).to_pylist(), metadata_dropped
    else:
        from download.safety_classifier import classifier_drops

        checked, drops = classifier_drops(folder)
    dropped = {d.key for d in drops}
    kept = sub.table
    if opts.safety == "classifier" and dropped:
        kept = without(sub, dropped).table
        attempts = attempts.filter(pc.not_equal(attempts.column("status"), SAFETY_DROPPED_STATUS))
    write_record(folder.root / SAFETY_DROPPED_FILE, full, drops)
    return kept, attempts, report(opts, full, sub, checked, drops)


def _open_topup(out: Path, sub: Subset, opts: DownloadOptions) -> tuple[ShardsDir, list[int]]:
    """The finished download ``sub`` tops up, its shards checked; no first-round shard may be missing."""
    folder = ShardsDir.open_topup(out, sub.path, sub.topup, opts.layout(sub.kept))
    with progress(transient=True) as bar:
        task = bar.add_task("checking shards", total=None, unit="shard")
        todo = folder.verify(lambda done, total: bar.update(task, completed=done, total=total))
    if todo:
        raise ReactError(f"{out} lost {len(todo)} shard(s) of its download; run react download "
                         f"{folder.manifest['input']['path']} --out {out} --resume before the top-up")
    return folder, []


def _requested(folder: ShardsDir, sub: Subset, opts: DownloadOptions) -> tuple[Subset, list[Subset]]:
    """The download's original subset and the top-up subsets appended to it so far (``sub`` is one
    of them): the summary covers every pair ever requested into the folder."""
    keep = tuple(c for c in folder.manifest["layout"]["kept_columns"] if c != SHARD_SUBSET_KEY)

    def load(path: str) -> Subset:
        if Path(path).resolve() == Path(sub.path).resolve():
            return sub
        if not Path(path).is_file():
            raise ReactError(f"{path}, a subset downloaded into {folder.root}, is gone; the summary needs its rows")
        return read_subset(path, keep)

    original = sub if sub.topup is None else load(folder.manifest["input"]["path"])
    return original, [load(t["path"]) for t in folder.topups]


def _topup_round(folder: ShardsDir, sub: Subset, inputs: _RoundInputs, opts: DownloadOptions, verb: str) -> None:
    """A top-up subset's rows, into new shards after the existing ones; a row the folder already
    attempted is refused (a top-up never fetches anything twice)."""
    seen = set(folder.attempts([SHARD_SUBSET_KEY]).column(SHARD_SUBSET_KEY).to_pylist()) if folder.shards else set()
    again = [k for k in sub.table.column(SHARD_SUBSET_KEY).to_pylist() if k in seen]
    if again:
        raise ReactError(f"{sub.path}: {len(again)} of its rows (first {again[0]!r}) were already requested "
                         f"into {folder.root}; a top-up holds only new pairs")
    index, first = len(folder.rounds), folder.next_shard()
    shards = -(-sub.rows // opts.shard_size)
    table, cols, rewrite = inputs.prepared(sub.table, index)
    run_round(folder, Round(index, table, first, list(range(first, first + shards)), cols, sub.rows, rewrite,
                            commit_each=False), opts, f"topping up ({verb})")
    folder.add_round(first, shards, sub.rows)
    folder.add_topup(Path(sub.path).resolve(), sub.rows, sub.digest)


def _open_and_verify(out: Path, sub: Subset, opts: DownloadOptions, *, resume: bool, retry_failed: bool,
                     overwrite: bool) -> tuple[ShardsDir, list[int]]:
    """The output folder (resumed, retried, overwritten or new) with every shard
    it holds checked; returns it and the shards still to download."""
    record = {"path": str(sub.path), "rows": sub.rows, "digest": sub.digest}
    folder = ShardsDir.open(out, record, opts.layout(sub.kept), resume=resume, retry_failed=retry_failed,
                            overwrite=overwrite)
    with progress(transient=True) as bar:
        task = bar.add_task("checking shards", total=None, unit="shard")
        todo = folder.verify(lambda done, total: bar.update(task, completed=done, total=total))
    kept_before = len(folder.shards)
    if kept_before:
        console.print(f"{kept_before} complete shard(s) kept, {len(todo)} to download", highlight=False)
    return folder, todo


class _RoundInputs:
    """What img2dataset reads in a round: the rows as they are, or, with
    ``--local-corpus``, rewritten to point at files on disk (restored after)."""

    def __init__(self, sub: Subset, local, folder: ShardsDir) -> None:
        self.local, self.folder = local, folder
        self.columns = list(sub.kept)
        self.image_paths = dict(zip(sub.table.column(SHARD_SUBSET_KEY).to_pylist(), sub.image_paths)) \
            if sub.image_paths else None

    def prepared(self, table: pa.Table, index: int) -> tuple[pa.Table, list[str], tuple | None]:
        if self.local is None:
            return table, self.columns, None
        from download.local import LOCAL_URL, RESTORE

        return self.local.prepare(table, self.image_paths, self.folder.work / "inputs" / f"files-{index}"), \
            [*self.columns, LOCAL_URL], RESTORE


def _retry_round(folder: ShardsDir, subset: pa.Table, inputs: _RoundInputs, opts: DownloadOptions, verb: str) -> None:
    """``--retry-failed``: the rows whose latest attempt failed, into new shards after the existing ones."""
    failed = _failed_rows(folder, subset)
    if failed.num_rows == 0:
        console.print("nothing to retry: every row is downloaded", highlight=False)
        return
    index, first = len(folder.rounds), folder.next_shard()
    shards = -(-failed.num_rows // opts.shard_size)
    table, cols, rewrite = inputs.prepared(failed, index)
    run_round(folder, Round(index, table, first, list(range(first, first + shards)), cols,
                            failed.num_rows, rewrite, commit_each=False), opts, f"retrying ({verb})")
    folder.add_round(first, shards, failed.num_rows)


def _failed_rows(folder: ShardsDir, subset: pa.Table) -> pa.Table:
    """The rows whose latest attempt failed, in subset order, as img2dataset's input."""
    names = subset.column_names
    attempts = folder.attempts(names)
    # a row the safety classifier dropped was downloaded: not a failure to retry
    failed = attempts.filter(pc.invert(pc.is_in(attempts.column("status"),
                                                pa.array(["success", SAFETY_DROPPED_STATUS])))).select(names)
    position = {k: i for i, k in enumerate(subset.column(SHARD_SUBSET_KEY).to_pylist())}
    keys = failed.column(SHARD_SUBSET_KEY).to_pylist()
    order = sorted(range(failed.num_rows), key=lambda i: position.get(keys[i], i))
    return failed.take(pa.array(order, pa.int64())).cast(subset.schema)

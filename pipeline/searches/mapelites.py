"""MAP-Elites over the 1000 ImageNet classes (Nguyen et al. 2015), on pyribs' archive.

The archive is ``ribs.archives.GridArchive`` with one cell per class
(``dims=[1000]``, measure = class index + 0.5); its elite is the genome whose
image the model reads as that class with the highest softmax probability.
Each generation (Nguyen's loop):

1. generation 0: ``population`` genomes from ``encoding.initial``; later:
   ``population`` parents drawn uniformly from the archive's elites
   (``archive.sample_elites``) and mutated (``encoding.mutate``);
2. every offspring is decoded and scored on all 1000 classes in batched model
   calls (:class:`scoring.Scorer`), in-process or as Dask tasks of ``batch``
   genomes (decode + score on the worker, which returns only the best
   probability of each class in its batch and which offspring had it);
3. an offspring enters every cell whose elite it beats: for each class the
   best offspring (the first on ties) is added with objective = its
   probability of the class; the archive keeps it only if it beats the
   current elite (strictly). The generation is kept with it (``found_at``).

Images are quantised to 1/255 before scoring, so an elite's confidence is the
model's probability on the uint8 image the store keeps.

Resumable: every ``checkpoint_every`` generations (and at the end) the
archive, the RNG state, the generation reached and the history are pickled
to ``<store>-checkpoints/fooling-<run>.pkl`` (temp file + rename); running
the same search again resumes from there, or extends it to more
generations. A checkpoint written with other settings is refused unless
``overwrite``.
"""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ribs.archives import GridArchive
from tqdm.auto import tqdm

from perturber.pipeline import atomic, config, inference, models, tasks
from perturber.pipeline.searches import SearchError, encodings, fooling, scoring

__all__ = ["evolve", "new_archive", "best_per_class", "checkpoint_path", "CLASSES"]

CLASSES = 1000
MEASURES = np.arange(CLASSES, dtype=np.float64)[:, None] + 0.5  # cell i holds class i
CHECKPOINT_VERSION = 1


def new_archive(solution_dim: int, seed: int) -> GridArchive:
    """An empty archive: one cell per ImageNet class, ``found_at`` (generation) beside each elite."""
    return GridArchive(solution_dim=solution_dim, dims=[CLASSES], ranges=[(0, CLASSES)], seed=seed,
                       solution_dtype=np.float32,
                       extra_fields={"found_at": ((), np.int32)})


def quantised(images: torch.Tensor) -> torch.Tensor:
    """Images rounded to the 256 levels a uint8 store keeps (in place: ``images`` is a fresh decode)."""
    return images.clamp_(0, 1).mul_(255).round_().div_(255)


def best_per_class(scorer: scoring.Scorer, encoding: encodings.Encoding, genomes: np.ndarray,
                   batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode and score ``genomes`` (N, D) in batches; for each class, the best
    probability (1000,) float32 and the offspring that has it (1000,) int64
    (the first one on ties)."""
    best = np.full(CLASSES, -1.0, dtype=np.float32)
    which = np.zeros(CLASSES, dtype=np.int64)
    for start in range(0, len(genomes), batch):
        with torch.no_grad():
            images = quantised(encoding.decode(genomes[start:start + batch], scorer.device))
        p = scorer.probabilities(images)
        top, arg = p.max(0), p.argmax(0)
        better = top > best
        best[better], which[better] = top[better], arg[better] + start
    return best, which


_SCORERS: dict[tuple[str, int], scoring.Scorer] = {}


def score_task(model: str, encoding: encodings.Encoding, genomes: np.ndarray, batch: int,
               threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A Dask task: :func:`best_per_class` with the model kept warm in the worker's process."""
    tasks.use_threads(threads)
    key = (model, batch)
    if key not in _SCORERS:
        _SCORERS[key] = scoring.Scorer(model, batch_size=batch)
    return best_per_class(_SCORERS[key], encoding, genomes, batch)


def checkpoint_path(store: Any, run: str) -> Path:
    """Where a run's checkpoint lives: beside a local store, else in the cache directory."""
    text = str(store).rstrip("/")
    folder = Path(text + "-checkpoints") if "://" not in text else config.cache_dir() / "fooling-checkpoints"
    return folder / f"fooling-{run}.pkl"


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(path) as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)


def _load(path: Path, settings: dict) -> dict | None:
    """The checkpoint at ``path`` if it was written with ``settings``; None if there is none."""
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)  # our own file, beside the store
    except Exception as exc:
        raise SearchError(f"{path}: not a readable checkpoint ({type(exc).__name__}); use --overwrite to start over") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise SearchError(f"{path}: not a checkpoint of this version; use --overwrite to start over")
    if state["settings"] != settings:
        diff = ", ".join(f"{k} {state['settings'].get(k)!r} ≠ {v!r}" for k, v in settings.items()
                         if state["settings"].get(k) != v)
        raise SearchError(f"{path}: a checkpoint from other settings ({diff}); use --overwrite to start over")
    return state


def evolve(model: str, encoding: str = "cppn", generations: int = 100, population: int = 100, seed: int = 0,
           size: int | None = None, store: Any = None, run: str | None = None, checkpoint_every: int = 10,
           overwrite: bool = False, client: Any = None, batch: int | None = None, transfer_to: Sequence[str] = (),
           progress: bool = False, threads: int | None = None, encoding_options: dict | None = None,
           classes: Sequence[int] | None = None, on_generation: Callable[[int], None] | None = None) -> fooling.Elites:
    """MAP-Elites with ``encoding`` ('cppn' or 'direct') against ``model``; returns the elites.

    ``generations`` after the initial one (generation 0), ``population``
    offspring each; images ``size`` px (default: the model's input size).
    With ``store``: writes ``fooling/<run>`` at the end (with the transfer to
    the ``transfer_to`` models) and checkpoints every ``checkpoint_every``
    generations beside it. ``client``: a Dask client that scores batches of
    ``batch`` offspring (default: the model's tuned batch size here) on its
    workers (``threads`` torch threads each); the archive stays here.
    ``classes``: keep elites of these ImageNet indices only (default: all
    1000; the history still counts the others as 0). ``on_generation(g)`` is
    called after each generation is done.
    """
    spec = models.spec(model)  # errors first, before any model is loaded
    for other in transfer_to:
        models.spec(other)
    size = int(size or spec.input_size)
    if not 16 <= size <= 1024:
        raise SearchError(f"size {size}: use 16..1024 px")
    if generations < 0 or population < 1 or checkpoint_every < 1:
        raise SearchError("generations ≥ 0, population ≥ 1 and checkpoint_every ≥ 1, please")
    cells = np.ones(CLASSES, dtype=bool)
    if classes is not None:
        wanted = np.asarray(classes, dtype=np.int64).ravel()
        if len(wanted) == 0 or wanted.min() < 0 or wanted.max() >= CLASSES:
            raise SearchError(f"classes {list(classes)[:5]}: give ImageNet indices in 0..{CLASSES - 1}")
        cells[:] = False
        cells[wanted] = True
    run = run or f"{encoding}-{model}-{seed}"
    fooling.group(run)
    enc = encodings.make(encoding, size, **(encoding_options or {}))
    device = models.best_device()
    batch = int(batch or inference.tuned_batch_size(model, str(device)))
    settings = {"method": encoding, "model": model, "seed": int(seed), "size": size, "population": int(population),
                "batch": batch, "classes": None if classes is None else np.flatnonzero(cells).tolist(),
                "encoding": enc.settings()}
    path = checkpoint_path(store, run) if store is not None else None
    state = None if path is None or overwrite else _load(path, settings)
    if state is not None and state["generation"] > generations:
        raise SearchError(f"{path}: the checkpoint is at generation {state['generation']}, beyond generations "
                          f"{generations}; ask for at least that many, or use --overwrite to start over")
    if state is None:
        rng = np.random.default_rng(seed)
        state = {"version": CHECKPOINT_VERSION, "settings": settings, "generation": -1, "archive": new_archive(enc.solution_dim, seed),
                 "rng": rng.bit_generator.state, "history": [], "evaluations": 0, "seconds": 0.0}
    archive: GridArchive = state["archive"]
    rng = np.random.default_rng()
    rng.bit_generator.state = state["rng"]
    scorer = scoring.Scorer(model, device, batch_size=batch) if client is None else None

    def evaluate(genomes):
        if client is None:
            return best_per_class(scorer, enc, genomes, batch)
        futures = [client.submit(score_task, model, enc, genomes[i:i + batch], batch, threads=threads, pure=False)
                   for i in range(0, len(genomes), batch)]
        best, which = np.full(CLASSES, -1.0, dtype=np.float32), np.zeros(CLASSES, dtype=np.int64)
        for i, (top, arg) in enumerate(client.gather(futures)):  # in batch order: ties go to the first, as in-process
            better = top > best
            best[better], which[better] = top[better], arg[better] + i * batch
        return best, which

    start = state["generation"] + 1
    bar = tqdm(total=generations + 1, initial=start, desc=f"fooling {model} ({encoding})", unit="gen", disable=not progress)
    clock = time.perf_counter()
    for g in range(start, generations + 1):
        genomes = enc.initial(population, rng) if g == 0 else enc.mutate(archive.sample_elites(population)["solution"], rng)
        best, which = evaluate(genomes)
        current = _objectives(archive)
        new = (best > current) & cells
        if new.any():
            archive.add(genomes[which[new]], best[new], MEASURES[new], found_at=np.full(int(new.sum()), g, np.int32))
        row = fooling.history_row(np.maximum(_objectives(archive), 0))
        state["history"].append(row)
        state["evaluations"] += len(genomes)
        state["generation"] = g
        bar.update(1)
        bar.set_postfix(mean=f"{row['mean_confidence']:.3f}", median=f"{row['median_confidence']:.3f}",
                        above_099=row["classes_above_099"])
        if path is not None and ((g + 1) % checkpoint_every == 0 or g == generations):
            state["rng"] = rng.bit_generator.state
            state["seconds"] += time.perf_counter() - clock
            clock = time.perf_counter()
            _save(path, state)
        if on_generation is not None:
            on_generation(g)
    bar.close()
    state["seconds"] += time.perf_counter() - clock
    elites = _elites(archive, enc, state, settings, device)
    if store is not None:
        transfer = scoring.transfer(elites.images, elites.classes, list(transfer_to)) if transfer_to else None
        fooling.write(store, run, elites, transfer)
    return elites


def _objectives(archive: GridArchive) -> np.ndarray:
    """(1000,) each cell's elite objective, -inf where empty."""
    out = np.full(CLASSES, -np.inf, dtype=np.float32)
    d = archive.data(["index", "objective"], return_type="tuple")
    out[d[0]] = d[1]
    return out


def _elites(archive: GridArchive, enc: encodings.Encoding, state: dict, settings: dict, device: torch.device) -> fooling.Elites:
    d = archive.data(["index", "solution", "objective", "found_at"])
    order = np.argsort(d["index"])
    images = []
    for i in range(0, len(order), 64):
        with torch.no_grad():
            x = quantised(enc.decode(d["solution"][order[i:i + 64]], device)).cpu()
        images.append(torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    hist = {k: np.array([row[k] for row in state["history"]]) for k in ("mean_confidence", "median_confidence", "classes_above_099")}
    return fooling.Elites(method=settings["method"], model=settings["model"], seed=settings["seed"],
                          classes=d["index"][order].astype(np.int64),
                          images=np.concatenate(images) if images else np.zeros((0, enc.size, enc.size, 3), np.uint8),
                          confidence=d["objective"][order].astype(np.float32), found_at=d["found_at"][order].astype(np.int32),
                          history=hist, settings=settings, evaluations=state["evaluations"], seconds=state["seconds"])

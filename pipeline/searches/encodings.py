"""Genomes → images: the direct and the CPPN encoding of Nguyen et al. 2015.

An encoding turns genomes (N, D) float32 numpy arrays into images (N, 3, S, S)
float in [0, 1] (torch, batched, on the device asked for) and owns its
variation operators: ``initial(n, rng)`` (N, D) and ``mutate(genomes, rng)``.
Randomness comes only from the ``rng`` (a numpy Generator) passed in.

- :class:`Direct`: every gene is one colour value of one pixel, in [0, 1], on
  a ``resolution`` × ``resolution`` grid upsampled bilinearly to S. Nguyen
  evolved every pixel of a 256 px image; here the default genome is 56 px
  (9,408 genes): a 1000-cell archive of full 224 px genomes would hold 600 MB
  of float32 and every checkpoint would write it, while 56 px keeps both at
  38 MB; ``resolution=S`` is Nguyen's full-resolution genome. Initial genomes
  are uniform in [0, 1]; mutation is Deb's bounded polynomial mutation
  (:func:`polynomial_mutation`), each gene with probability ``rate`` (Nguyen:
  0.1) and distribution index ``eta`` (Nguyen's "mutation strength": 15).
- :class:`CPPN`: a compositional pattern-producing network with a fixed
  topology whose weights and per-node activation functions evolve (the issue
  allows this in place of NEAT's growing topologies). See :class:`CPPN`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from perturber.pipeline.searches import SearchError

__all__ = ["Encoding", "Direct", "CPPN", "ACTIVATIONS", "polynomial_mutation", "make", "ENCODINGS"]


def polynomial_mutation(x: np.ndarray, rng: np.random.Generator, rate: float, eta: float,
                        low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Deb's bounded polynomial mutation (Deb & Agrawal 1995; as in NSGA-II and
    DEAP's ``mutPolynomialBounded``), vectorised.

    Each gene of ``x`` (any shape, values in [low, high]) mutates with
    probability ``rate``: ``x + δ (high - low)`` with δ drawn from a polynomial
    density ∝ (1 - |δ|)^eta, rescaled so the result stays in [low, high] (a gene
    at a bound can only move inwards). Larger ``eta``: smaller steps (far from
    the bounds E|δ| = 1 / (eta + 2)). Returns float32 of the same shape.
    """
    x = np.asarray(x, dtype=np.float64)
    mutate = rng.random(x.shape) < rate
    u = rng.random(x.shape)
    span = high - low
    below = u < 0.5
    # distance to the bound on the side the step goes towards, in units of span
    xy = np.where(below, 1.0 - (x - low) / span, 1.0 - (high - x) / span)
    val = np.where(below, 2 * u + (1 - 2 * u) * xy ** (eta + 1), 2 * (1 - u) + 2 * (u - 0.5) * xy ** (eta + 1))
    power = 1.0 / (eta + 1)
    delta = np.where(below, val ** power - 1.0, 1.0 - val ** power)
    out = np.where(mutate, np.clip(x + delta * span, low, high), x)
    return out.astype(np.float32)


class Encoding:
    """What MAP-Elites needs from a genome encoding."""

    name: str
    size: int
    solution_dim: int

    def initial(self, n: int, rng: np.random.Generator) -> np.ndarray:  # (n, D) float32
        raise NotImplementedError

    def mutate(self, genomes: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # (N, D) → (N, D)
        raise NotImplementedError

    def decode(self, genomes: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:  # (N, 3, S, S) in [0, 1]
        raise NotImplementedError

    def settings(self) -> dict:
        """Everything that defines the encoding (a checkpoint from other settings is refused)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class Direct(Encoding):
    """Pixels as genes: (3, resolution, resolution) values in [0, 1], upsampled bilinearly to ``size``."""

    name = "direct"

    def __init__(self, size: int, resolution: int = 56, rate: float = 0.1, eta: float = 15.0):
        self.size, self.resolution, self.rate, self.eta = int(size), int(min(resolution, size)), float(rate), float(eta)
        self.solution_dim = 3 * self.resolution ** 2

    def initial(self, n, rng):
        return rng.random((n, self.solution_dim), dtype=np.float32)

    def mutate(self, genomes, rng):
        return polynomial_mutation(genomes, rng, self.rate, self.eta)

    def decode(self, genomes, device="cpu"):
        r = self.resolution
        x = torch.from_numpy(np.array(genomes, dtype=np.float32)).to(device).view(-1, 3, r, r)  # a copy: callers may write to it
        if r != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)  # stays in [0, 1]
        return x


#: The activation functions a CPPN hidden node can have (the gene's integer part indexes this);
#: each works in place on the tensor it is given and returns it.
ACTIVATIONS: dict[str, callable] = {
    "identity": lambda z: z,
    "sine": lambda z: torch.sin(z, out=z),
    "gaussian": lambda z: z.square_().neg_().exp_(),  # exp(-z²)
    "sigmoid": torch.sigmoid_,
    "tanh": torch.tanh_,
    "abs": torch.abs_,
}
_FUNCTIONS = list(ACTIVATIONS.values())


class CPPN(Encoding):
    """A fixed-topology CPPN: (x, y, r) → hidden layers → RGB, weights and activations evolved.

    Topology (default ``hidden=(8, 8, 8)``): the inputs are the pixel's
    coordinates x (column) and y (row), each in [-1, 1] over the image, its
    distance from the centre r = sqrt(x² + y²); every layer is fully
    connected from the layer before, plus a bias; each hidden node has its own activation from :data:`ACTIVATIONS`;
    the output layer has 3 nodes (R, G, B) with a sigmoid, so colours are in
    (0, 1). Decoding evaluates the network at every pixel of every genome at
    once: one ``bmm`` per layer over the (N, inputs, S²) coordinate grid.

    Genome (D = Σ weights + Σ hidden): the weight matrices, each
    (inputs + 1, outputs) row-major with the bias in the last row, input layer
    first; then one gene per
    hidden node in [0, len(ACTIVATIONS)) whose integer part picks its
    activation. Initial weights N(0, ``init_sigma``²), activations uniform.
    Mutation: each weight with probability ``rate`` gets N(0, ``sigma``²)
    added (then clipped to ±``limit``); each activation gene with probability
    ``activation_rate`` is drawn anew.
    """

    name = "cppn"

    def __init__(self, size: int, hidden: Sequence[int] = (8, 8, 8), init_sigma: float = 1.0, rate: float = 0.1,
                 sigma: float = 0.5, limit: float = 8.0, activation_rate: float = 0.05):
        self.size, self.hidden = int(size), tuple(int(h) for h in hidden)
        self.init_sigma, self.rate, self.sigma, self.limit = float(init_sigma), float(rate), float(sigma), float(limit)
        self.activation_rate = float(activation_rate)
        sizes = (3, *self.hidden, 3)
        self._shapes = [(a + 1, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self._n_weights = sum(a * b for a, b in self._shapes)
        self.solution_dim = self._n_weights + sum(self.hidden)

    def pack(self, weights: Sequence[np.ndarray], activations: Sequence[int | str]) -> np.ndarray:
        """One genome (D,) from weight matrices (shapes as in the topology) and activations (names or indices)."""
        names = list(ACTIVATIONS)
        acts = [names.index(a) if isinstance(a, str) else int(a) for a in activations]
        for w, shape in zip(weights, self._shapes, strict=True):
            if np.shape(w) != shape:
                raise ValueError(f"weight matrix of shape {np.shape(w)}, expected {shape}")
        return np.concatenate([np.ravel(w) for w in weights] + [np.asarray(acts, dtype=np.float64) + 0.5]).astype(np.float32)

    def shapes(self) -> list[tuple[int, int]]:
        """The (inputs incl. bias, outputs) shape of each weight matrix, input layer first."""
        return list(self._shapes)

    def initial(self, n, rng):
        w = rng.normal(0.0, self.init_sigma, (n, self._n_weights))
        a = rng.uniform(0.0, len(ACTIVATIONS), (n, sum(self.hidden)))
        return np.concatenate([np.clip(w, -self.limit, self.limit), a], 1).astype(np.float32)

    def mutate(self, genomes, rng):
        g = np.array(genomes, dtype=np.float64)
        w, a = g[:, :self._n_weights], g[:, self._n_weights:]
        step = rng.normal(0.0, self.sigma, w.shape) * (rng.random(w.shape) < self.rate)
        w[:] = np.clip(w + step, -self.limit, self.limit)
        redraw = rng.random(a.shape) < self.activation_rate
        a[:] = np.where(redraw, rng.uniform(0.0, len(ACTIVATIONS), a.shape), a)
        return g.astype(np.float32)

    def grid(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """(3, S²) the network's inputs at every pixel: x, y, r (row-major pixels)."""
        c = torch.linspace(-1.0, 1.0, self.size, device=device)
        y, x = torch.meshgrid(c, c, indexing="ij")
        return torch.stack([x, y, torch.sqrt(x * x + y * y)]).view(3, -1)

    def decode(self, genomes, device="cpu"):
        g = torch.as_tensor(np.asarray(genomes, dtype=np.float32)).to(device)
        n, pixels = len(g), self.size ** 2
        acts = g[:, self._n_weights:].floor().long().clamp(0, len(ACTIVATIONS) - 1)
        h = self.grid(device).expand(n, 3, pixels)
        start = node = 0
        for i, (fan_in, fan_out) in enumerate(self._shapes):
            w = g[:, start:start + fan_in * fan_out].view(n, fan_in, fan_out)
            start += fan_in * fan_out
            z = torch.bmm(w[:, :-1].transpose(1, 2), h).add_(w[:, -1, :, None])  # (N, fan_out, S²); the last row is the bias
            if i == len(self._shapes) - 1:
                return z.sigmoid_().view(n, 3, self.size, self.size)
            h = _activate(z.view(n * fan_out, pixels), acts[:, node:node + fan_out].reshape(-1)).view(n, fan_out, pixels)
            node += fan_out
        raise AssertionError("unreachable")


def _activate(rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Each row (one node of one genome, over all pixels) through its own activation, in place.

    On a GPU: one gather, function and scatter per activation. On the CPU a
    batch has few rows, and working on each row where it lies saves the
    gather and the scatter (a third of the decoding time)."""
    if rows.device.type == "cpu" and len(rows) <= 1024:
        for i, k in enumerate(which.tolist()):
            _FUNCTIONS[k](rows[i])
        return rows
    for k, f in enumerate(_FUNCTIONS):
        idx = (which == k).nonzero().squeeze(1)
        if len(idx) and k:  # 0 is the identity
            rows.index_copy_(0, idx, f(rows.index_select(0, idx)))
    return rows


ENCODINGS = {"direct": Direct, "cppn": CPPN}


def make(name: str, size: int, **options) -> Encoding:
    """The encoding ``name`` ('direct' or 'cppn') for ``size`` px images."""
    if name not in ENCODINGS:
        raise SearchError(f"unknown encoding {name!r} (known: {', '.join(ENCODINGS)})")
    return ENCODINGS[name](size, **options)

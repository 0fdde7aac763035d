"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): a causal transformer over
the user's most recent items predicts the next one. Needs torch, imported only when fitting or scoring."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from simrec.errors import ConfigError
from simrec.recommenders.fitted import FittedRecommender, Interactions

#: Floats one batch's full-softmax logits may hold before SASRec asks for a smaller batch or ``loss="bce"``.
MAX_SOFTMAX_LOGITS = 300_000_000


def _import_torch(who: str) -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{who} needs PyTorch. Fix: pip install torch (CPU wheels suffice)") from None
    return torch


@contextlib.contextmanager
def torch_fit_session(seed: int, threads: int | None = None) -> Iterator[Any]:
    """Seed torch and cap its threads (default ``min(2, cpu count)``) for one fit, restoring the caller's RNG
    state and thread count afterwards: a fit must neither perturb other torch code nor take every core."""
    torch = _import_torch("fitting a torch recommender")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or min(2, os.cpu_count() or 1))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield torch
    finally:
        torch.set_num_threads(before)


def _windows(seqs: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-item targets, ``(N, max_len)`` each, left-padded with 0 and items shifted by +1.

    A history longer than ``max_len + 1`` is cut into consecutive windows so every interaction is a target
    once (the paper trains on the last ``max_len`` only, which wastes most of a long history)."""
    xs, ys = [], []
    for s in seqs:
        s = np.asarray(s, dtype=np.int64) + 1
        for end in range(s.size, 1, -max_len):
            w = s[max(0, end - max_len - 1):end]
            x = np.zeros(max_len, np.int64)
            y = np.zeros(max_len, np.int64)
            x[max_len - w.size + 1:] = w[:-1]
            y[max_len - w.size + 1:] = w[1:]
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ConfigError("SASRec needs at least one user with two or more interactions to learn a next item "
                          "from. Fix: fit on a longer log (or use 'popular' / 'ease' for single-item users)")
    return np.stack(xs), np.stack(ys)


def _build_net(torch: Any, n_items: int, max_len: int, hidden: int, blocks: int, heads: int, dropout: float) -> Any:
    nn = torch.nn

    class SASRecNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)  # row 0 left-pads short histories
            self.pos = nn.Embedding(max_len, hidden)
            self.drop = nn.Dropout(dropout)
            # pre-norm blocks with a hidden-sized point-wise FFN, as in the paper
            layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=hidden, dropout=dropout,
                                               activation="relu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, blocks, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)
            self.heads = heads
            nn.init.normal_(self.item.weight, std=hidden ** -0.5)
            with torch.no_grad():
                self.item.weight[0].zero_()

        def forward(self, x: Any) -> Any:
            length = x.shape[1]
            pad = x == 0
            h = self.item(x) * hidden ** 0.5 + self.pos.weight[-length:][None]
            h = self.drop(h) * (~pad)[..., None]
            # causal and no attention to padding; each position may always see itself, so a padding row
            # (never a target) has one key and no NaN from an all-masked softmax
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            blocked = causal[None] | pad[:, None, :]
            blocked &= ~torch.eye(length, dtype=torch.bool, device=x.device)[None]
            mask = torch.zeros(blocked.shape, dtype=h.dtype, device=x.device).masked_fill(blocked, float("-inf"))
            return self.blocks(h, mask=mask.repeat_interleave(self.heads, dim=0))

    return SASRecNet()


class SASRecRecommender(FittedRecommender):
    """SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the user's last ``max_len`` items.

    Item embeddings are shared between input and output layer, positions have learned embeddings; a
    candidate's score is the dot product of the last position's output with its item embedding. Every
    position of every training window predicts its next item. Defaults: ``max_len=50``, ``blocks=2``,
    ``hidden=64``, ``heads=1``, ``dropout=0.2``, Adam (``lr=3e-3``, ``betas=(0.9, 0.98)``), ``batch_size=128``,
    ``epochs=20``.

    ``loss="softmax"`` (default) is cross-entropy over the full catalog, which ranks better than the paper's
    loss (Klenitskiy & Vasilev, RecSys 2023); ``loss="bce"`` is the paper's binary cross-entropy against one
    uniformly sampled negative per position, for catalogs too large for a full softmax. With the defaults,
    fitting MovieLens-100K's train split takes about 30 s on two idle CPU cores.

    ``threads`` caps torch's threads during the fit (default 1; ``None`` for ``min(2, cpu count)``), because on a
    machine already busy with other work each of the transformer's many small ops waits for every thread,
    and with the cores oversubscribed two threads made the fit about ten times slower than one.
    """

    name = "sasrec"

    def __init__(self, action_space: spaces.Space, *, seed: int | None = None, max_len: int = 50,
                 hidden: int = 64, blocks: int = 2, heads: int = 1, dropout: float = 0.2, epochs: int = 20,
                 batch_size: int = 128, lr: float = 3e-3, loss: Literal["softmax", "bce"] = "softmax",
                 threads: int | None = 1, progress: bool = False, **kw: Any) -> None:
        super().__init__(action_space, seed=seed, **kw)
        if loss not in ("softmax", "bce"):
            raise ConfigError(f"SASRec loss must be 'softmax' or 'bce', got {loss!r}")
        if max_len < 1 or hidden < 1 or blocks < 1 or epochs < 1 or batch_size < 1:
            raise ConfigError("SASRec max_len, hidden, blocks, epochs and batch_size must be at least 1")
        if threads is not None and threads < 1:
            raise ConfigError(f"SASRec threads must be at least 1 (or None for min(2, cpu count)), got {threads}")
        if hidden % heads:
            raise ConfigError(f"SASRec hidden ({hidden}) must be a multiple of heads ({heads})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"SASRec dropout must lie in [0, 1), got {dropout}")
        self.max_len, self.hidden, self.blocks, self.heads = max_len, hidden, blocks, heads
        self.dropout, self.epochs, self.batch_size, self.lr = dropout, epochs, batch_size, lr
        self.loss, self.threads, self.progress = loss, threads, progress
        self._seed = 0 if seed is None else int(seed)
        self.net: Any = None
        self.losses: list[float] = []  # mean training loss per epoch

    def _fit(self, data: Interactions) -> None:
        if self.loss == "softmax" and self.batch_size * self.max_len * data.n_items > MAX_SOFTMAX_LOGITS:
            raise ConfigError(f"SASRec's full softmax over {data.n_items:,} items needs too much memory at "
                              f"batch_size={self.batch_size}. Fix: pass loss='bce' or a smaller batch_size")
        from tqdm.auto import tqdm

        x_np, y_np = _windows(data.sequences(), self.max_len)
        with torch_fit_session(self._seed, self.threads) as torch:
            f = torch.nn.functional
            net = _build_net(torch, data.n_items, self.max_len, self.hidden, self.blocks, self.heads, self.dropout)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr, betas=(0.9, 0.98))
            x_all, y_all = torch.from_numpy(x_np), torch.from_numpy(y_np)
            net.train()
            self.losses = []
            for _ in (bar := tqdm(range(self.epochs), desc="sasrec", unit="epoch", disable=not self.progress)):
                total, n = 0.0, 0
                for idx in torch.randperm(x_all.shape[0]).split(self.batch_size):
                    x, y = x_all[idx], y_all[idx]
                    valid = y > 0
                    h = net(x)[valid]
                    target = y[valid]
                    if self.loss == "softmax":
                        loss = f.cross_entropy(h @ net.item.weight[1:].T, target - 1)
                    else:
                        neg = torch.randint(1, data.n_items + 1, target.shape)
                        pos_logit = (h * net.item(target)).sum(-1)
                        neg_logit = (h * net.item(neg)).sum(-1)
                        loss = (f.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                                + f.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * target.numel()
                    n += target.numel()
                self.losses.append(total / max(n, 1))
                bar.set_postfix(loss=f"{self.losses[-1]:.3f}")
            net.eval()
        self.net = net

    def score_items(self, user: int, history: Sequence[int], items: np.ndarray) -> np.ndarray:
        h = np.asarray(history[-self.max_len:], dtype=np.int64)
        if h.size == 0:
            return self._pop[items].astype(np.float64)
        torch = _import_torch("SASRecRecommender")
        x = np.zeros((1, self.max_len), np.int64)
        x[0, self.max_len - h.size:] = h + 1
        # one user's forward pass is a few dozen tiny ops: more threads only add a wait at every op, which
        # on a busy machine measured 190 ms a call against 0.4 ms on one thread
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                last = self.net(torch.from_numpy(x))[0, -1]
                s = self.net.item.weight[torch.from_numpy(np.asarray(items, dtype=np.int64) + 1)] @ last
        finally:
            torch.set_num_threads(before)
        return s.double().numpy()

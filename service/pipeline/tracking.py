"""Defect tracking for STEM movies: link per-frame defect detections into trajectories, live.

:class:`DefectTracker` takes each frame's detections (positions in pixels and a defect class) as the
CNN produces them and links them to the tracks active in the previous frames by a gated Hungarian
assignment on Euclidean distance. Linking ignores the class, because defects change class from frame
to frame; those changes are what the Markov transition matrix measures. A track that finds no
detection stays active for up to ``max_gap`` missed frame indices, then ends; a detection that joins
no track starts a new one.

The dynamics are accumulated incrementally as frames arrive, so reading them costs nothing that
grows with the movie:

* **Diffusion.** Only displacements over which a track kept its class count (every observation from
  one end to the other has the class), so a class change never adds a jump to a class's statistics.
  :meth:`diffusion` reports ``D`` in px²/frame from the covariance-based estimator (CVE) of
  Vestergaard, Blainey & Flyvbjerg (Phys. Rev. E 89, 022726, 2014): with ``Δr_n`` the one-frame
  steps of a track, ``D = <|Δr_n|²>/4 + <Δr_n·Δr_(n+1)>/2``. The localisation noise of the detector
  (``σ²`` per axis, independent between frames) adds ``4σ²`` to ``<|Δr_n|²>`` and ``-2σ²`` to the
  covariance of consecutive steps, so it cancels exactly, and so does the blur of a frame scanned
  while the defect moves; ``σ²`` comes out as ``-<Δr_n·Δr_(n+1)>/2`` (minus a blur term). The CVE is
  unbiased and close to optimal for a random walk seen with noise, with a much smaller spread than a
  fit of ``MSD(τ) = 4·D·τ + 4·σ²`` with a free offset, which the tracker also reports (``D_msd_fit``:
  weighted least squares over lags ``1 .. max_lag``, weights ``n_τ / τ²`` following the variance of a
  mean squared displacement; the per-lag MSD is kept for ``τ = 1 .. lag_window``, in frame indices,
  so a step across a skipped frame is lag 2 and never enters the CVE).
* **Transitions.** Counts of ``class(t) -> class(t + 1)`` over consecutive observations of every
  track that are exactly one frame apart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

log = logging.getLogger(__name__)

ESTIMATOR = ("covariance-based estimator (Vestergaard et al. 2014): D = <|dr_n|^2>/4 + <dr_n . dr_n+1>/2 over "
             "one-frame steps within a class; D_msd_fit: weighted fit of MSD(tau) = 4*D*tau + 4*sigma^2")

_NO_FRAME = -(2**62)  # an empty slot of the history ring: its lag is never within the window


@dataclass
class Track:
    """One defect's trajectory: one entry per frame it was seen in (frames may have gaps)."""

    id: int
    frames: list[int] = field(default_factory=list)
    xy: list[tuple[float, float]] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


class DefectTracker:
    """Frame-to-frame linking of defect detections, with running diffusion and transition statistics.

    ``gate_px``: the largest distance a defect may move between two observations of its track.
    ``max_gap``: how many missed frame indices a track survives (0: it ends at the first miss).
    ``lag_window``: the largest lag kept for the mean squared displacement (and allowed as
    ``max_lag`` in :meth:`diffusion`).
    """

    def __init__(self, n_classes: int, *, gate_px: float, max_gap: int = 1,
                 class_names: Sequence[str] | None = None, lag_window: int = 8):
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if not (math.isfinite(gate_px) and gate_px > 0):
            raise ValueError(f"gate_px must be a positive number, got {gate_px}")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        if lag_window < 1:
            raise ValueError(f"lag_window must be >= 1, got {lag_window}")
        names = [str(i) for i in range(n_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != n_classes or len(set(names)) != n_classes:
            raise ValueError(f"class_names must be {n_classes} distinct names, got {list(names)}")
        self.n_classes = n_classes
        self.class_names = names
        self.gate_px = float(gate_px)
        self.max_gap = int(max_gap)
        self.lag_window = int(lag_window)

        self.tracks: dict[int, Track] = {}
        self.n_frames = 0
        self.n_detections = 0
        self.last_frame: int | None = None
        self._next_id = 0

        # active tracks, one row each
        k = self.lag_window
        self._ids = np.zeros(0, np.int64)
        self._xy = np.zeros((0, 2))                      # last position
        self._frame = np.zeros(0, np.int64)              # last frame seen
        self._cls = np.zeros(0, np.int64)                # last class
        self._run_start = np.zeros(0, np.int64)          # first frame of the current constant-class run
        self._n_obs = np.zeros(0, np.int64)
        self._hist_xy = np.zeros((0, k, 2))              # ring of the last k observations
        self._hist_frame = np.zeros((0, k), np.int64)
        self._step = np.full((0, 2), np.nan)              # last one-frame step within the run (NaN: none)

        # running statistics
        self._sq_sum = np.zeros((n_classes, k))          # sum of squared displacements [class, lag-1]
        self._sq_count = np.zeros((n_classes, k), np.int64)
        self._trans = np.zeros((n_classes, n_classes), np.int64)
        # CVE sums per class: one-frame steps (|dr|^2, |dr|^4, count) and consecutive pairs (dot, dot^2, count)
        self._step_sums = np.zeros((n_classes, 3))
        self._pair_sums = np.zeros((n_classes, 3))

    # ------------------------------------------------------------------ linking

    @property
    def active_ids(self) -> list[int]:
        """Ids of the tracks that can still be extended."""
        return [int(i) for i in self._ids]

    def update(self, frame: int, xy: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Link one frame's detections (``xy`` [m, 2] px as (x, y), ``classes`` [m]); return their track ids."""
        frame, xy, classes = self._check(frame, xy, classes)
        m = len(xy)

        # tracks missing for more than max_gap frame indices end (frame indices may have been skipped)
        alive = frame - self._frame - 1 <= self.max_gap
        if not alive.all():
            self._keep_rows(alive)

        rows, dets = self._assign(xy)
        ids = np.empty(m, np.int64)
        if len(rows):
            ids[dets] = self._ids[rows]
            self._extend(rows, frame, xy[dets], classes[dets])
        new = np.ones(m, bool)
        new[dets] = False
        if new.any():
            ids[new] = self._start(frame, xy[new], classes[new])

        for i, (x, y), c in zip(ids.tolist(), xy.tolist(), classes.tolist()):
            t = self.tracks[i]
            t.frames.append(frame)
            t.xy.append((x, y))
            t.classes.append(c)
        self.n_frames += 1
        self.n_detections += m
        self.last_frame = frame
        # and those that even the next frame index could no longer extend end now, too
        alive = frame - self._frame <= self.max_gap
        if not alive.all():
            self._keep_rows(alive)
        return ids

    def _check(self, frame: int, xy: np.ndarray, classes: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise ValueError(f"frame must be an integer, got {frame!r}")
        frame = int(frame)
        if self.last_frame is not None and frame <= self.last_frame:
            raise ValueError(f"frame {frame} arrived after frame {self.last_frame}; frames must increase")
        xy = np.asarray(xy, dtype=np.float64)
        if xy.size == 0:
            xy = xy.reshape(0, 2)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"frame {frame}: xy must have shape [m, 2], got {list(xy.shape)}")
        if not np.isfinite(xy).all():
            raise ValueError(f"frame {frame}: xy contains NaN or infinite positions")
        classes = np.asarray(classes)
        if classes.shape != (len(xy),):
            raise ValueError(f"frame {frame}: classes must have shape [{len(xy)}], got {list(classes.shape)}")
        if classes.size and not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"frame {frame}: classes must be integers, got dtype {classes.dtype}")
        classes = classes.astype(np.int64)
        if classes.size and (classes.min() < 0 or classes.max() >= self.n_classes):
            raise ValueError(f"frame {frame}: classes must lie in 0..{self.n_classes - 1}")
        return frame, xy, classes

    def _assign(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gated Hungarian assignment of active tracks to detections: (track rows, detection indices)."""
        empty = np.zeros(0, np.int64)
        if len(self._ids) == 0 or len(xy) == 0:
            return empty, empty
        dist = cdist(self._xy, xy)
        ok = dist <= self.gate_px
        r_any, d_any = ok.any(axis=1), ok.any(axis=0)
        if not r_any.any():
            return empty, empty
        r_idx, d_idx = np.flatnonzero(r_any), np.flatnonzero(d_any)
        sub, sub_ok = dist[np.ix_(r_idx, d_idx)], ok[np.ix_(r_idx, d_idx)]
        # a forbidden pair costs more than any set of allowed pairs, so the assignment first links as
        # many allowed pairs as it can, then minimises their total distance; forbidden pairs are dropped
        big = self.gate_px * (min(sub.shape) + 1) + 1.0
        r, d = linear_sum_assignment(np.where(sub_ok, sub, big))
        keep = sub_ok[r, d]
        return r_idx[r[keep]], d_idx[d[keep]]

    def _extend(self, rows: np.ndarray, frame: int, xy: np.ndarray, cls: np.ndarray) -> None:
        k, n = self.lag_window, self.n_classes
        old_cls = self._cls[rows]
        step1 = self._frame[rows] == frame - 1
        if step1.any():
            self._trans += np.bincount(old_cls[step1] * n + cls[step1], minlength=n * n).reshape(n, n)

        run_start = np.where(cls != old_cls, frame, self._run_start[rows])
        hist_frame = self._hist_frame[rows]                               # [p, k]
        lag = frame - hist_frame
        valid = (lag <= k) & (hist_frame >= run_start[:, None])
        if valid.any():
            sq = ((xy[:, None, :] - self._hist_xy[rows]) ** 2).sum(axis=-1)  # [p, k]
            flat = (np.broadcast_to(cls[:, None], lag.shape) * k + lag - 1)[valid]
            self._sq_sum += np.bincount(flat, weights=sq[valid], minlength=n * k).reshape(n, k)
            self._sq_count += np.bincount(flat, minlength=n * k).reshape(n, k)

        # one-frame steps and consecutive pairs of them for the CVE, within the class's run
        step = xy - self._xy[rows]
        ok1 = step1 & (cls == old_cls)
        prev = self._step[rows]
        pair = ok1 & ~np.isnan(prev[:, 0])
        if ok1.any():
            s2 = (step[ok1] ** 2).sum(axis=1)
            c1 = cls[ok1]
            self._step_sums += np.stack([np.bincount(c1, weights=s2, minlength=n), np.bincount(c1, weights=s2**2, minlength=n),
                                         np.bincount(c1, minlength=n)], axis=1)
        if pair.any():
            dot = (step[pair] * prev[pair]).sum(axis=1)
            c2 = cls[pair]
            self._pair_sums += np.stack([np.bincount(c2, weights=dot, minlength=n), np.bincount(c2, weights=dot**2, minlength=n),
                                         np.bincount(c2, minlength=n)], axis=1)
        self._step[rows] = np.where(ok1[:, None], step, np.nan)

        slot = self._n_obs[rows] % k
        self._hist_xy[rows, slot] = xy
        self._hist_frame[rows, slot] = frame
        self._n_obs[rows] += 1
        self._xy[rows] = xy
        self._frame[rows] = frame
        self._cls[rows] = cls
        self._run_start[rows] = run_start

    def _start(self, frame: int, xy: np.ndarray, cls: np.ndarray) -> np.ndarray:
        q, k = len(xy), self.lag_window
        ids = np.arange(self._next_id, self._next_id + q, dtype=np.int64)
        self._next_id += q
        for i in ids.tolist():
            self.tracks[i] = Track(id=i)
        hist_xy = np.zeros((q, k, 2))
        hist_xy[:, 0] = xy
        hist_frame = np.full((q, k), _NO_FRAME, np.int64)
        hist_frame[:, 0] = frame
        f = np.full(q, frame, np.int64)
        self._ids = np.concatenate([self._ids, ids])
        self._xy = np.concatenate([self._xy, xy])
        self._frame = np.concatenate([self._frame, f])
        self._cls = np.concatenate([self._cls, cls])
        self._run_start = np.concatenate([self._run_start, f])
        self._n_obs = np.concatenate([self._n_obs, np.ones(q, np.int64)])
        self._hist_xy = np.concatenate([self._hist_xy, hist_xy])
        self._hist_frame = np.concatenate([self._hist_frame, hist_frame])
        self._step = np.concatenate([self._step, np.full((q, 2), np.nan)])
        return ids

    def _keep_rows(self, keep: np.ndarray) -> None:
        for name in ("_ids", "_xy", "_frame", "_cls", "_run_start", "_n_obs", "_hist_xy", "_hist_frame", "_step"):
            setattr(self, name, getattr(self, name)[keep])

    # ------------------------------------------------------------------ dynamics

    def diffusion(self, *, max_lag: int = 4, min_points: int = 20) -> dict[str, Any]:
        """Diffusion coefficient per class name, in px²/frame, or None where the data are too few.

        Each class gets ``{"D", "D_stderr", "loc_var", "n_steps", "n_pairs", "D_msd_fit",
        "loc_var_msd_fit", "n_displacements", "lags", "msd", "counts"}``:

        * ``D`` from the covariance-based estimator over the class's one-frame steps (``n_steps``)
          and consecutive pairs of them (``n_pairs``), both at least ``min_points`` (else None);
          ``D_stderr`` its approximate standard error (the two sums treated as independent samples);
          ``loc_var`` the per-axis localisation variance in px² it implies (it also absorbs frame
          blur, and can come out slightly negative);
        * ``D_msd_fit`` and ``loc_var_msd_fit`` from the weighted fit of ``MSD(τ) = 4·D·τ + 4·loc_var``
          over the lags ``1..max_lag`` with at least ``min_points`` displacements (at least two such
          lags, else None); ``n_displacements`` the displacements in the fit, and the per-lag MSD
          (px²) and counts of the lags used.
        """
        if not 2 <= max_lag <= self.lag_window:
            raise ValueError(f"max_lag must lie in 2..{self.lag_window} (the tracker's lag_window), got {max_lag}")
        if min_points < 1:
            raise ValueError(f"min_points must be >= 1, got {min_points}")
        out: dict[str, Any] = {}
        lags_all = np.arange(1, max_lag + 1, dtype=np.float64)
        for c, name in enumerate(self.class_names):
            entry: dict[str, Any] = {"D": None, "D_stderr": None, "loc_var": None, "D_msd_fit": None,
                                     "loc_var_msd_fit": None}
            (s2, s4, n1), (sd, sd2, n2) = self._step_sums[c], self._pair_sums[c]
            entry["n_steps"], entry["n_pairs"] = int(n1), int(n2)
            if n1 >= min_points and n2 >= min_points:
                m2, md = s2 / n1, sd / n2
                entry["D"] = float(m2 / 4.0 + md / 2.0)
                entry["loc_var"] = float(-md / 2.0)
                var2, vard = max(s4 / n1 - m2**2, 0.0), max(sd2 / n2 - md**2, 0.0)
                entry["D_stderr"] = float(math.sqrt(var2 / (16.0 * n1) + vard / (4.0 * n2)))
            counts = self._sq_count[c, :max_lag]
            use = counts >= min_points
            entry["n_displacements"] = int(counts[use].sum()) if use.sum() >= 2 else 0
            entry["lags"], entry["msd"], entry["counts"] = [], [], []
            if use.sum() >= 2:
                n, tau = counts[use].astype(np.float64), lags_all[use]
                msd = self._sq_sum[c, :max_lag][use] / n
                sw = np.sqrt(n) / tau                              # sqrt of weights n_tau / tau^2
                a = np.stack([4.0 * tau, np.full_like(tau, 4.0)], axis=1)
                (d, loc_var), *_ = np.linalg.lstsq(a * sw[:, None], msd * sw, rcond=None)
                entry.update({"D_msd_fit": float(d), "loc_var_msd_fit": float(loc_var),
                              "lags": [int(t) for t in tau], "msd": [float(v) for v in msd],
                              "counts": [int(v) for v in n]})
            out[name] = None if entry["D"] is None and entry["D_msd_fit"] is None else entry
        return out

    def transition_matrix(self) -> dict[str, Any]:
        """Markov matrix of class(t) -> class(t+1) over observations exactly one frame apart.

        ``{"classes": names, "counts": int [n, n], "probabilities": float [n, n] (rows sum to 1;
        NaN rows where a class has no counted transitions), "row_counts": int [n]}``.
        """
        counts = self._trans.copy()
        row = counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            prob = counts / row[:, None]
        prob[row == 0] = np.nan
        return {"classes": list(self.class_names), "counts": counts, "probabilities": prob, "row_counts": row}

    def summary(self, *, pixel_size_nm: float | None = None, frame_interval_s: float | None = None,
                max_lag: int = 4, min_points: int = 20) -> dict:
        """JSON-ready summary: tracks, diffusion per class (px²/frame; nm²/frame given a pixel size, and nm²/s
        given the frame interval too) and the transition matrix with class names (NaN probabilities as None)."""
        for name, value in (("pixel_size_nm", pixel_size_nm), ("frame_interval_s", frame_interval_s)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        lengths = [len(t) for t in self.tracks.values()]
        diff: dict[str, Any] = {}
        for name, r in self.diffusion(max_lag=max_lag, min_points=min_points).items():
            if r is None:
                diff[name] = None
                continue
            entry = {"D_px2_per_frame": r["D"], "D_stderr_px2_per_frame": r["D_stderr"], "loc_var_px2": r["loc_var"],
                     "n_steps": r["n_steps"], "D_msd_fit_px2_per_frame": r["D_msd_fit"],
                     "n_displacements": r["n_displacements"]}
            if pixel_size_nm is not None:
                for key in ("D", "D_stderr", "D_msd_fit"):
                    v = entry[f"{key}_px2_per_frame"]
                    entry[f"{key}_nm2_per_frame"] = None if v is None else v * pixel_size_nm**2
                    if frame_interval_s is not None:
                        entry[f"{key}_nm2_per_s"] = None if v is None else v * pixel_size_nm**2 / frame_interval_s
            diff[name] = entry
        tm = self.transition_matrix()
        return {
            "n_frames": self.n_frames,
            "n_detections": self.n_detections,
            "n_tracks": len(self.tracks),
            "n_active_tracks": len(self._ids),
            "mean_track_length": float(np.mean(lengths)) if lengths else None,
            "pixel_size_nm": None if pixel_size_nm is None else float(pixel_size_nm),
            "frame_interval_s": None if frame_interval_s is None else float(frame_interval_s),
            "diffusion": {"estimator": ESTIMATOR, "max_lag": max_lag, "min_points": min_points, "classes": diff},
            "transitions": {
                "classes": tm["classes"],
                "counts": tm["counts"].tolist(),
                "probabilities": [[None if math.isnan(p) else float(p) for p in row] for row in tm["probabilities"]],
                "row_counts": tm["row_counts"].tolist(),
            },
        }

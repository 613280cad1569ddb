"""Ferroelectric switching loops from the random-bond random-field Ising model: the physics, the sample, scan lines.

Pure numpy, no sockets, no torch. Model of Ovchinnikov et al., PRL 103, 157203 (2009) and Kumar et al.,
PRB 84, 024203 (2011): a grain is an ``L x L`` square lattice of Ising dipoles ``S_i = +-1`` (periodic
boundaries) with energy

    E = - sum_<ij> J_ij S_i S_j - sum_i (h_i + H) S_i,   J_ij = J0 + dJ * xi_ij,   h_i = dh * eta_i,

(nearest-neighbour bonds ``<ij>``, ferromagnetic for ``J_ij > 0``; the papers write the same Hamiltonian
as ``H = sum J_ij S_i S_j + sum (h_i + H) S_i`` with the opposite sign convention). ``xi`` and ``eta``
are standard normal and quenched: drawn once per lattice. Each lattice gets an exactly Gaussian
histogram of bonds and of fields (the normal quantiles, randomly arranged on the lattice: stratified
sampling), so lattices with the same (J0, dJ, dh) differ only by the arrangement of their disorder,
which lowers the lattice-to-lattice scatter of the loops without changing the model. The tip probes
``GRAINS`` = 16 independent grains of ``LATTICE`` = 16 (4096 dipoles): a pixel's loop is their mean.
With fewer dipoles a loop is dominated by the few avalanches of its own disorder realisation and the
three parameters cannot be told apart (with one 16 x 16 lattice the held-out R² of dh was ~0.6).

Units: energies, fields and the three parameters are in units of ``k_B T`` at the fixed temperature
``T = TEMPERATURE = 1`` (the clean 2-D Ising ferromagnet orders below ``T_c = 2.269 J0``, so the whole
range J0 >= 0.6 is ordered, at T / T_c = 0.14 .. 0.7); the field ``H`` is an energy per dipole in the
same units, labelled "a.u." on the wire. Results hardly depended on the temperature (T / J0 halved or
doubled); what matters is the ratio of disorder to coupling.

Dynamics: Glauber (heat-bath) single-spin dynamics with checkerboard updates, the two sublattices in
turn, vectorised over many independent lattices. A spin takes ``+1`` with probability
``1 / (1 + exp(-2 h_loc / T))`` whatever its current value (``h_loc`` = the local field
``sum_j J_ij S_j + h_i + H``), implemented as ``S = sign(h_loc + T/2 * l)`` with ``l`` standard logistic.

Measurement: starting from the saturated state ``S = -1`` at ``-H_MAX`` the field is ramped linearly
to ``+H_MAX`` (ascending branch, "up") and back (descending branch, "down") at a fixed rate of
``DEFAULT_AXIS.scale / sweeps_per_step`` (0.38 k_B T) per Monte-Carlo sweep, 128 sweeps a loop. The
mean polarisation after every sweep, linearly interpolated at the field values of the requested axis,
gives the two branches; the loop's physics therefore does not depend on how densely the instrument
samples it. Speed (this machine, one process): about 300 pixel loops/s, i.e. 4 800 16 x 16 lattices/s
or 6-7 ns per spin update; two processes reach about 380 loops/s (:func:`simulate_loops_parallel`).

Identifiability: a loop fixes J0 (the coercive field scale), the total disorder and whether it sits on
bonds or fields, but a weak kind of disorder under a strong one of the other kind leaves almost no
trace (dh below ~1 k_BT under dJ ~ 3 k_BT, dJ below ~1 under dh ~ 6). The demo film is therefore built
from clearly weak or strong levels of each kind (``LoopsConfig``), over a wide smooth range of J0.

Modules: :mod:`.sweep` (the field sweep and its sampling on an axis), :mod:`.ising` (the model and its
Monte Carlo), :mod:`.parallel` (many loops on several processes), :mod:`.config` (:class:`LoopsConfig`),
:mod:`.sample` (:class:`LoopsSample`), :mod:`.truth` (the ground-truth file), :mod:`.source`
(:class:`LoopsSource`).
"""

from __future__ import annotations

from .config import COMPONENTS, PARAM_UNITS, PARAMS, LoopsConfig
from .ising import CHUNK, GRAINS, LATTICE, TEMPERATURE, simulate_loops
from .parallel import BLOCK, process_pool, simulate_loops_parallel
from .sample import LoopsSample
from .source import LoopsSource
from .sweep import DEFAULT_AXIS, H_MAX, SWEEPS_PER_STEP, axis_fields, field_ramp
from .truth import load_ground_truth

__all__ = [
    "BLOCK",
    "CHUNK",
    "COMPONENTS",
    "DEFAULT_AXIS",
    "GRAINS",
    "H_MAX",
    "LATTICE",
    "PARAMS",
    "PARAM_UNITS",
    "SWEEPS_PER_STEP",
    "TEMPERATURE",
    "LoopsConfig",
    "LoopsSample",
    "LoopsSource",
    "axis_fields",
    "field_ramp",
    "load_ground_truth",
    "process_pool",
    "simulate_loops",
    "simulate_loops_parallel",
]

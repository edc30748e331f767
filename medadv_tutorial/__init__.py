"""medadv_tutorial: the tested kernels behind the *medadv-tutorial* book.

Adversarial attacks on medical-image classifiers, the feature-space analysis that
makes them detectable, the detectors, and the Hierarchical Feature Constraint (HFC)
that hides them.  Every chapter of the book imports this package.

Conventions (see each module's docstrings):

* images are float tensors in ``[0, 1]``, shape ``(N, C, H, W)``; normalisation
  lives inside the models, so attack budgets are in pixel space (``k/255``);
* every kernel takes its device from its inputs (CUDA, CPU, MPS);
* settings that change between a quick CPU run and a paper-scale GPU run live in
  :mod:`medadv_tutorial.profiles`;
* importing the package pins the CPU math libraries to their AVX2 kernels
  (:mod:`medadv_tutorial.numerics`), so stored outputs reproduce on any x86-64 CPU.
"""

from . import numerics as _numerics

# Before anything imports numpy or runs a kernel: the CPU pin that makes outputs portable.
_numerics.pin()

__version__ = "0.2.0"

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
* importing the package changes nothing outside it: no environment variable, thread count,
  random generator or matplotlib setting.  What a run fixes on purpose -- the CPU numerics pin
  (:mod:`medadv_tutorial.numerics`), the seeds, the thread count, the figure resolution -- an
  :class:`~medadv_tutorial.experiment.Experiment` context fixes when it is entered
  (``book.start()`` in the chapters), and says so in a printed line.
"""

__version__ = "0.2.0"

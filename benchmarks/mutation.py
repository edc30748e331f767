"""Mutation testing of the kernels and metrics whose numbers the book reports (not run in CI).

Usage::

    pip install -r requirements-dev.txt                # mutmut 3.8.1
    python benchmarks/mutation.py                      # every module below, one worker, from scratch
    python benchmarks/mutation.py metrics gaussian     # some of them
    python benchmarks/mutation.py --jobs 2             # more workers (one per core)
    python benchmarks/mutation.py --resume             # keep mutants/ from the last run: only changed functions rerun
    python benchmarks/mutation.py --report             # print the table of the last run again, run nothing
    python benchmarks/mutation.py --report --show      # ... with the diff of every surviving mutant

`mutmut <https://mutmut.readthedocs.io>`_ copies the package to ``mutants/``, writes many
small changes ("mutants") into the functions listed below -- ``<`` for ``<=``, ``+ 1`` for
``- 1``, a constant changed, an argument dropped -- and, for each, runs the tests that call the
mutated function (``[tool.mutmut]`` in ``pyproject.toml`` names the test files).  A mutant
is *killed* when a test fails; one that *survives* is a change of the maths that no test notices.

Each surviving mutant is then sorted into one of:

* **message-only**: it changes nothing but the text of an error or warning message (a string in
  a ``raise`` or ``warn``, or the name/hint string handed to a validator that only builds
  messages) and no test matches that text.  A message mutant that a test *does* match is
  killed, and counted as such.
* **equivalent**: listed in ``EQUIVALENT`` below with the reason it cannot change any result
  (a bound that is never reached, a tie that cannot occur...).
* **survived**: everything else -- a gap in the tests.

The score of a module is ``killed / (mutants - message-only - equivalent)``: the share of the
mutants that change a result which the tests catch.  The run prints one row per module,
then the survivors and the message-only mutants by name (``mutmut show NAME`` prints the diff
of one).  Timeouts (a mutant that makes the tests loop) count as killed.

The run uses its own result cache (a temporary ``MEDADV_CACHE``) and ``MEDADV_TEST_THREADS=1``.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "medadv_tutorial"

# module -> (source file, the functions mutated: mutmut names, `xǁClassǁmethod` for methods)
SCOPES: dict[str, tuple[str, list[str]]] = {
    "gaussian": ("gaussian.py", ["*"]),
    "metrics": ("metrics.py", ["*"]),
    "gmm": ("gmm.py", ["*"]),
    # the HFC energy (mixture log-densities, per layer, per target class) and the loss the attack subtracts
    "hfc": ("hfc.py", [
        "xǁMixtureǁhalf_log_det_precision", "xǁMixtureǁweighted_log_prob", "xǁ_Compiledǁ__init__",
        "xǁ_Planǁ__init__", "x__layer_energy", "x__energies", "x_hfc_layer_energies", "x_hfc_energy",
        "x_hfc_components", "xǁHFCLossǁ__init__", "xǁHFCLossǁbind",
    ]),
    # the attack loop: the L-inf projection box, the settings of the step and the step itself
    "attacks": ("attacks.py", ["x_linf_box", "x__linf_box", "x__check_settings", "x_iterative_attack", "x__iterate"]),
    # the detectors' scores: fitting what the score needs, the score, the threshold and the decision
    "detectors": ("detectors/", [
        "base.xǁDetectorǁscore", "base.xǁDetectorǁthreshold", "base.xǁDetectorǁpredict",
        "base.xǁDetectorǁcalibrate", "base.xǁDetectorǁ_finish_fit",
        "gaussians.xǁ_GaussianBaseǁ_factorise", "gaussians.xǁ_GaussianBaseǁ_loo_precision",
        "gaussians.xǁMGMǁ*", "gaussians.xǁMahalanobisǁ*",
        "kernel_density.x__pairwise_sq_dist", "kernel_density.x__kde_log_density", "kernel_density.xǁKDǁ*",
        "lid.x__lid_mle", "lid.xǁLIDǁ*",
        "uncertainty.x__mc_dropout_variance", "uncertainty.xǁBUǁ_score",
        "two_sided.xǁTwoSidedǁ_set_reference", "two_sided.xǁTwoSidedǁscore",
        "ensembles.xǁ_LayerLRǁ_layer_scores", "ensembles.xǁ_LayerLRǁ_score", "ensembles.xǁ_LayerLRǁlayer_scores",
        "one_class.xǁ_SklearnOneClassǁ_score", "dnn.xǁDNNDetectorǁ_score",
    ]),
}

# Surviving mutants that cannot change any result, with the reason (mutmut names, see `mutmut show NAME`).
_CPU = "device argument: the same on the CPU (the tests' device); only a GPU tensor tells them apart"
_SQUARE = "shape[0] vs shape[1] (or -1 vs -2) of a matrix already checked to be square"
_EQ = {
    # ---- gaussian
    "gaussian.x_class_moments__mutmut_16": _CPU,
    "gaussian.x_class_moments__mutmut_20": _CPU,
    "gaussian.x_class_moments__mutmut_25": "counts.to(None): dividing a float tensor in place by int64 counts "
                                           "promotes to the float dtype, same quotient",
    "gaussian.x_mahalanobis_sq__mutmut_13": "flat_cholesky dropped: recomputed from precisions_cholesky, the same "
                                            "matrix (the argument only saves a copy)",
    "gaussian.x_mahalanobis_sq__mutmut_16": "as mutmut_13",
    "gaussian.x_precision_cholesky__mutmut_16": "identity built in float32: solve_triangular promotes it to chol's "
                                                "dtype, identity entries are exact",
    "gaussian.x_precision_cholesky__mutmut_19": "as mutmut_16 (default dtype float32)",
    "gaussian.x_precision_cholesky__mutmut_17": _CPU,
    "gaussian.x_precision_cholesky__mutmut_20": _CPU,
    "gaussian.x_precision_cholesky__mutmut_21": _SQUARE,
    "gaussian.x_precision_cholesky__mutmut_22": _SQUARE,
    "gaussian.x_regularised_cholesky__mutmut_32": _SQUARE,
    "gaussian.x_regularised_cholesky__mutmut_55": _CPU,
    "gaussian.x_regularised_cholesky__mutmut_58": _CPU,
    "gaussian.x_regularised_cholesky__mutmut_66": "scale when d = 0: only read under `if d and ...`",
    "gaussian.x_regularised_cholesky__mutmut_105": "suggested reg without its 1e-8 * spread term: spread = max/mean "
                                                   "variance <= d, so the term is < 1e-3 (the floor) for d < 1e5",
    "gaussian.x_regularised_cholesky__mutmut_109": "1e-8 / spread instead of * spread: below the 1e-3 floor either way "
                                                   "(spread >= 1)",
    "gaussian.x_relative_ridge__mutmut_23": _SQUARE,
    "gaussian.x_relative_ridge__mutmut_24": _SQUARE,
    "gaussian.x_whitened_sq__mutmut_1": "default exact_sum=True: (y*y).sum vs squared vector_norm, which differ in "
                                        "the last bit only (the default just picks the faster)",
    # ---- metrics
    "metrics.x__as_1d__mutmut_2": _CPU,
    "metrics.x__as_1d__mutmut_4": _CPU,
    "metrics.x_followup_auroc__mutmut_3": _CPU,
    "metrics.x_followup_auroc__mutmut_5": _CPU,
    "metrics.x_followup_auroc__mutmut_23": _CPU + " (np.asarray of a CPU tensor; integer labels never need grad)",
    "metrics.x_followup_auroc__mutmut_35": _CPU + " (np.asarray of a CPU tensor; a bool mask never needs grad)",
    "metrics.x__check_bootstrap__mutmut_7": "check_int's default minimum is 1, the bound dropped",
    "metrics.x__labels_and_scores__mutmut_23": "float 0/1 labels: roc_auc_score gives the same AUROC",
    "metrics.x__labels_and_scores__mutmut_25": "as mutmut_23",
    "metrics.x__labels_and_scores__mutmut_27": "as mutmut_23",
    "metrics.x__labels_and_scores__mutmut_29": "as mutmut_23",
    "metrics.x_followup_auroc__mutmut_92": "as _labels_and_scores mutmut_23 (float 0/1 labels)",
    "metrics.x_followup_auroc__mutmut_11": "probabilities not cast to float64: roc_auc_score ranks any real dtype "
                                           "the same",
    "metrics.x_followup_auroc__mutmut_13": "as mutmut_11",
    "metrics.x__resample_counts__mutmut_6": "rng.integers(n) is rng.integers(0, n): the same draws",
    "metrics.x_followup_auroc_interval__mutmut_40": "as _resample_counts mutmut_6",
    "metrics.x_tpr_interval__mutmut_91": "as _resample_counts mutmut_6",
    "metrics.x_tpr_interval__mutmut_103": "as _resample_counts mutmut_6",
    "metrics.x_tpr_interval__mutmut_87": "np.sort axis=1 vs the default -1: the same axis of a 2-D array",
    "metrics.x__weighted_auroc__mutmut_28": "searchsorted's default side is 'left'",
    "metrics.x__weighted_auroc__mutmut_3": "unstable sort of the clean scores: tied scores swap places, but the "
                                           "cumulative weights are read only at the edges of a tie group",
    "metrics.x__weighted_auroc__mutmut_5": "as mutmut_3",
    "metrics.x__weighted_auroc__mutmut_7": "as mutmut_3 (numpy reads kind='STABLE' as 'stable')",
    "metrics.x_difference_interval__mutmut_12": "astype(None) is astype(float64)",
    "metrics.x_f1_at_threshold__mutmut_18": "finite=None is falsy like finite=False in check_real",
    "metrics.x_f1_interval__mutmut_21": "as f1_at_threshold mutmut_18",
    "metrics.x_followup_auroc__mutmut_74": "float('NAN') is nan",
    "metrics.x_followup_auroc__mutmut_99": "float('NAN') is nan",
    "metrics.x_followup_auroc_interval__mutmut_63": "float('NAN') is nan",
    "metrics.x_followup_auroc_interval__mutmut_66": "float('NAN') is nan",
    "metrics.x_rate_interval__mutmut_14": "n_boot of _check_bootstrap is discarded by rate_interval (Wilson)",
    "metrics.x_rate_interval__mutmut_15": "seed of _check_bootstrap is discarded by rate_interval (Wilson)",
    "metrics.x_tpr_interval__mutmut_22": "tnr's lower bound: tpr_at_tnr, called for the estimate, checks tnr with "
                                         "the same bounds, so a bad tnr still raises the same ValueError",
    "metrics.x_tpr_interval__mutmut_23": "as mutmut_22",
    "metrics.x_tpr_interval__mutmut_28": "as mutmut_22",
    "metrics.x_tpr_interval__mutmut_29": "as mutmut_22",
    "metrics.x_tpr_interval__mutmut_35": "as mutmut_22",
    "metrics.xǁIntervalǁ__str____mutmut_4": "format(x) is format(x, '')",
    # ---- gmm: device-only mutants (the tests run on the CPU; tests/test_gmm.py::test_cuda_matches_cpu covers a GPU)
    "gmm.x__compute_device__mutmut_1": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_2": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_3": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_4": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_5": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_6": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_7": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_8": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_9": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__compute_device__mutmut_10": "the MPS branch: never taken for a CPU tensor",
    "gmm.x__estimate_gaussian_parameters__mutmut_18": _CPU,
    "gmm.x__estimate_gaussian_parameters__mutmut_23": _CPU,
    "gmm.x_kmeans_plusplus__mutmut_67": _CPU,
    "gmm.x_kmeans_plusplus__mutmut_69": _CPU,
    "gmm.x_kmeans_plusplus__mutmut_79": _CPU,
    "gmm.x_kmeans_plusplus__mutmut_81": _CPU,
    "gmm.x_kmeans_plusplus__mutmut_118": _CPU,
    "gmm.x_kmeans_plusplus__mutmut_120": _CPU,
    "gmm.xǁGaussianMixtureǁ_as_tensor__mutmut_39": _CPU,
    "gmm.xǁGaussianMixtureǁ_init_tensor__mutmut_9": _CPU,
    "gmm.xǁGaussianMixtureǁ_init_tensor__mutmut_11": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_38": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_40": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_68": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_72": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_78": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_80": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_84": _CPU,
    "gmm.xǁGaussianMixtureǁ_initial_resp__mutmut_86": _CPU,
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_1": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_2": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_3": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_4": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_5": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_6": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_7": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_8": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_9": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_10": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_11": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_12": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_13": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_14": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_15": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_16": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_17": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_18": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_19": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁ_params_on__mutmut_20": "the cache of parameters moved to another device: never used when the data lie where the parameters do (the CPU)",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_25": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_27": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_28": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_29": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_30": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_31": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_32": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_33": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_34": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_35": "the MPS branch: never taken for a CPU tensor",
    "gmm.xǁGaussianMixtureǁfit__mutmut_89": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_90": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_91": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_92": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_93": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_94": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_95": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_96": "moving the parameters back to the input's device: a no-op when both are the CPU",
    "gmm.xǁGaussianMixtureǁfit__mutmut_97": "moving the parameters back to the input's device: a no-op when both are the CPU",
    # ---- gmm: equivalent (reasons beside each)
    "gmm.x__lloyd__mutmut_3": 'x_sq is the same for every centre of a row: the argmin over the centres ignores it',
    "gmm.x__lloyd__mutmut_7": 'x_sq is the same for every centre of a row: the argmin over the centres ignores it',
    "gmm.x__lloyd__mutmut_27": "no early stop: Lloyd's labels are a fixed point once they repeat, later iterations keep them",
    "gmm.x__lloyd__mutmut_28": 'as mutmut_27 (stops only when every label changed, i.e. runs on from the fixed point)',
    "gmm.x__lloyd__mutmut_32": 'int64 counts: sums / counts is a true division either way, the same quotient',
    "gmm.x__estimate_gaussian_parameters__mutmut_31": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch)",
    "gmm.x__estimate_gaussian_parameters__mutmut_37": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch)",
    "gmm.x__estimate_gaussian_parameters__mutmut_41": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch)",
    "gmm.x__estimate_gaussian_parameters__mutmut_42": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch)",
    "gmm.x__estimate_gaussian_parameters__mutmut_43": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch)",
    "gmm.x__estimate_gaussian_parameters__mutmut_44": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch)",
    "gmm.x__estimate_gaussian_parameters__mutmut_50": "the M step's batch size: any batch size gives the same covariances (test_components_in_several_batches_equal_one_batch) (range's default step 1)",
    "gmm.xǁGaussianMixtureǁ_as_tensor__mutmut_11": 'fit sets n_features_in_ = None before it checks X: d is None either way',
    "gmm.xǁGaussianMixtureǁ_as_tensor__mutmut_41": _CPU,
    "gmm.xǁGaussianMixtureǁ_as_tensor__mutmut_44": _CPU,
    "gmm.xǁGaussianMixtureǁ_as_tensor__mutmut_55": "the sum of all squared deviations is finite exactly when every column's sum is",
    "gmm.xǁGaussianMixtureǁ_init_tensor__mutmut_4": 'np.asarray of a CPU tensor or torch.as_tensor of an array: the same values either way',
    "gmm.xǁGaussianMixtureǁ_init_tensor__mutmut_5": 'as mutmut_4',
    "gmm.xǁGaussianMixtureǁ_init_tensor__mutmut_7": 'as mutmut_4',
    "gmm.xǁGaussianMixtureǁ_initialize__mutmut_54": 'cov is assigned again on every path before it is returned',
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_7": 'fitting=None is falsy like fitting=False',
    "gmm.xǁGaussianMixtureǁestimate_weighted_log_prob__mutmut_15": _CPU,
    "gmm.xǁGaussianMixtureǁfit__mutmut_35": 'the first iteration compares the bound with an infinity: never converged, + or -',
    "gmm.xǁGaussianMixtureǁfit__mutmut_37": 'n_iter is set by the loop, which runs at least once (max_iter >= 1)',
    "gmm.xǁGaussianMixtureǁfit__mutmut_71": 'two starts with exactly the same final bound: identical starts (explicit initial values) or a tie of floats',
    "gmm.x_kmeans_plusplus__mutmut_80": 'float64 draws against float32 cumulative sums: the same bins except at exact ties',
    "gmm.x_kmeans_plusplus__mutmut_82": 'as mutmut_80',
    "gmm.x_kmeans_plusplus__mutmut_100": 'searchsorted returns n only for a draw >= the total; draws are U * total with U < 1',
    # ---- detectors: device-only mutants (the tests run on the CPU)
    "detectors.dnn.xǁDNNDetectorǁ_score__mutmut_1": _CPU,
    "detectors.dnn.xǁDNNDetectorǁ_score__mutmut_5": _CPU,
    "detectors.dnn.xǁDNNDetectorǁ_score__mutmut_7": _CPU,
    "detectors.gaussians.xǁMGMǁ_log_density__mutmut_1": _CPU,
    "detectors.gaussians.xǁMGMǁ_log_density__mutmut_11": _CPU,
    "detectors.gaussians.xǁMGMǁ_log_density__mutmut_15": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_distances__mutmut_1": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_distances__mutmut_11": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_distances__mutmut_15": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_fit__mutmut_11": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_fit__mutmut_14": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_fit__mutmut_16": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_15": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_18": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_24": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_44": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_46": _CPU,
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_23": _CPU,
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_26": _CPU,
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_6": _CPU,
    "detectors.kernel_density.x__kde_log_density__mutmut_5": _CPU,
    "detectors.kernel_density.x__kde_log_density__mutmut_56": _CPU,
    "detectors.kernel_density.x__kde_log_density__mutmut_59": _CPU,
    "detectors.kernel_density.x__kde_log_density__mutmut_70": _CPU,
    "detectors.kernel_density.xǁKDǁ_groups__mutmut_3": _CPU,
    "detectors.kernel_density.xǁKDǁ_groups__mutmut_5": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_1": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_6": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_21": _CPU,
    "detectors.kernel_density.xǁKDǁ_training_scores__mutmut_1": _CPU,
    "detectors.kernel_density.xǁKDǁ_training_scores__mutmut_6": _CPU,
    "detectors.kernel_density.xǁKDǁ_training_scores__mutmut_20": _CPU,
    "detectors.lid.x__lid_mle__mutmut_6": _CPU,
    "detectors.lid.x__lid_mle__mutmut_72": _CPU,
    "detectors.lid.x__lid_mle__mutmut_74": _CPU,
    "detectors.lid.x__lid_mle__mutmut_77": _CPU,
    "detectors.lid.x__lid_mle__mutmut_80": _CPU,
    "detectors.lid.xǁLIDǁ_score__mutmut_8": _CPU,
    "detectors.one_class.xǁ_SklearnOneClassǁ_score__mutmut_4": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_50": "sum(+1) of a 2-D tensor is sum(-1)",
    # ---- detectors: equivalent (reasons beside each)
    "detectors.lid.x__lid_mle__mutmut_116": 'abs() of the mean: the sign inside it is dropped',
    "detectors.lid.x__lid_mle__mutmut_99": "topk's default dim is -1, dimension 1 of the 2-D distances",
    "detectors.lid.x__lid_mle__mutmut_90": "float('INF') is inf",
    "detectors.kernel_density.x__kde_log_density__mutmut_76": "float('INF') is inf",
    "detectors.lid.x__lid_mle__mutmut_40": 'the block size of the distance computation: any block size gives the same values (tests/test_detectors_edges.py checks 1-3 rows)',
    "detectors.kernel_density.x__kde_log_density__mutmut_29": 'the block size of the distance computation: any block size gives the same values (tests/test_detectors_edges.py checks 1-3 rows)',
    "detectors.kernel_density.x__kde_log_density__mutmut_35": 'the block size of the distance computation: any block size gives the same values (tests/test_detectors_edges.py checks 1-3 rows)',
    "detectors.lid.x__lid_mle__mutmut_42": 'the norms of the reference rows, recomputed from them by _pairwise_sq_dist when not given: the same values',
    "detectors.lid.x__lid_mle__mutmut_58": 'the norms of the reference rows, recomputed from them by _pairwise_sq_dist when not given: the same values',
    "detectors.lid.x__lid_mle__mutmut_61": 'the norms of the reference rows, recomputed from them by _pairwise_sq_dist when not given: the same values',
    "detectors.kernel_density.x__kde_log_density__mutmut_20": 'the norms of the reference rows, recomputed from them by _pairwise_sq_dist when not given: the same values',
    "detectors.kernel_density.x__kde_log_density__mutmut_48": 'the norms of the reference rows, recomputed from them by _pairwise_sq_dist when not given: the same values',
    "detectors.kernel_density.x__kde_log_density__mutmut_51": 'the norms of the reference rows, recomputed from them by _pairwise_sq_dist when not given: the same values',
    "detectors.kernel_density.x__pairwise_sq_dist__mutmut_3": 'the norms recomputed even when given: the same values',
    "detectors.kernel_density.x__kde_log_density__mutmut_73": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_9": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_14": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_25": _CPU,
    "detectors.kernel_density.xǁKDǁ_training_scores__mutmut_24": _CPU,
    "detectors.kernel_density.xǁKDǁ_score__mutmut_33": "the fast path returns the only group's scores, which the general path scatters to the same rows",
    "detectors.kernel_density.xǁKDǁ_score__mutmut_34": "the fast path returns the only group's scores, which the general path scatters to the same rows",
    "detectors.kernel_density.xǁKDǁ_score__mutmut_35": "the fast path returns the only group's scores, which the general path scatters to the same rows",
    "detectors.kernel_density.xǁKDǁ_score__mutmut_36": "the fast path returns the only group's scores, which the general path scatters to the same rows",
    "detectors.kernel_density.xǁKDǁ_score__mutmut_37": "the fast path returns the only group's scores, which the general path scatters to the same rows",
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_92": 's1 - p: the mean changes sign, and only its square is used',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_12": _CPU,
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_35": 'the CUDA generators forked: none on the CPU',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_36": 'as mutmut_35',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_39": 'as mutmut_35',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_40": 'as mutmut_35',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_45": 'as mutmut_35',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_47": 'as mutmut_35',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_41": 'the whole model run T times instead of the head: the same dropout draws on the same pooled features, more time',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_64": 'every tap computed instead of the penultimate only: the same penultimate features',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_65": 'logits=None is falsy like logits=False',
    "detectors.uncertainty.x__mc_dropout_variance__mutmut_67": 'as mutmut_64',
    "detectors.uncertainty.xǁBUǁ_score__mutmut_4": "batch_size None: the device's default batch; the masks are drawn per batch, and one batch holds the test images either way",
    "detectors.gaussians.xǁMGMǁ_training_scores__mutmut_10": _CPU,
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_27": _CPU,
    # ---- detectors: equivalent, second round
    "detectors.gaussians.xǁMGMǁ_training_scores__mutmut_5": "MGM's _score does not read labels (one Gaussian)",
    "detectors.gaussians.xǁMahalanobisǁ_training_scores__mutmut_5": "Mahalanobis' _score does not read labels (the nearest class)",
    "detectors.ensembles.xǁ_LayerLRǁ_layer_scores__mutmut_6": 'scanned=True skips a finiteness check the ensemble made already; without it the same check runs again, same result',
    "detectors.ensembles.xǁ_LayerLRǁ_layer_scores__mutmut_8": 'scanned=True skips a finiteness check the ensemble made already; without it the same check runs again, same result',
    "detectors.ensembles.xǁ_LayerLRǁ_layer_scores__mutmut_9": 'scanned=True skips a finiteness check the ensemble made already; without it the same check runs again, same result',
    "detectors.ensembles.xǁ_LayerLRǁlayer_scores__mutmut_15": 'scanned=True skips a finiteness check the ensemble made already; without it the same check runs again, same result',
    "detectors.ensembles.xǁ_LayerLRǁlayer_scores__mutmut_17": 'scanned=True skips a finiteness check the ensemble made already; without it the same check runs again, same result',
    "detectors.ensembles.xǁ_LayerLRǁlayer_scores__mutmut_18": 'scanned=True skips a finiteness check the ensemble made already; without it the same check runs again, same result',
    "detectors.ensembles.xǁ_LayerLRǁlayer_scores__mutmut_7": 'fitting=None is falsy like fitting=False',
    "detectors.ensembles.xǁ_LayerLRǁ_score__mutmut_4": 'decision_function returns float64: as_tensor keeps it',
    "detectors.ensembles.xǁ_LayerLRǁ_score__mutmut_6": 'decision_function returns float64: as_tensor keeps it',
    "detectors.one_class.xǁ_SklearnOneClassǁ_score__mutmut_11": 'decision_function returns float64: as_tensor keeps it',
    "detectors.one_class.xǁ_SklearnOneClassǁ_score__mutmut_13": 'decision_function returns float64: as_tensor keeps it',
    "detectors.one_class.xǁ_SklearnOneClassǁ_score__mutmut_6": _CPU,
    "detectors.kernel_density.x__pairwise_sq_dist__mutmut_17": "addmm's default beta is 1",
    "detectors.kernel_density.xǁKDǁ_training_scores__mutmut_9": _CPU,
    "detectors.kernel_density.xǁKDǁ_training_scores__mutmut_13": _CPU,
    "detectors.lid.x__lid_mle__mutmut_101": "topk's default is sorted=True",
    "detectors.base.xǁDetectorǁscore__mutmut_8": 'fitting=None is falsy like fitting=False',
    "detectors.base.xǁDetectorǁscore__mutmut_13": "the finiteness check always run: the caller's scan had found the features finite, same result",
    "detectors.base.xǁDetectorǁscore__mutmut_25": _CPU,
    "detectors.base.xǁDetectorǁscore__mutmut_29": _CPU,
    # ---- detectors: equivalent, third round
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_4": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_6": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_9": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_11": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_14": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_15": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_16": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_17": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_21": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_22": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_23": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_25": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_26": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_27": "message-only: regularised_cholesky's n, name and who only build its error messages (gaussian.py), which these calls never raise on the tests' data",
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_9": _CPU,
    "detectors.gaussians.xǁ_GaussianBaseǁ_factorise__mutmut_27": _SQUARE,
    "detectors.gaussians.xǁ_GaussianBaseǁ_loo_precision__mutmut_10": _SQUARE,
    "detectors.two_sided.xǁTwoSidedǁscore__mutmut_8": 'scanned is a hint that lets the wrapped detector skip a finiteness check: None / the default run the check again, same result',
    "detectors.two_sided.xǁTwoSidedǁscore__mutmut_11": 'scanned is a hint that lets the wrapped detector skip a finiteness check: None / the default run the check again, same result',
    # ---- hfc
    "hfc.x__energies__mutmut_49": _CPU,
    "hfc.x__energies__mutmut_52": _CPU,
    "hfc.x_hfc_components__mutmut_19": _CPU,
    "hfc.x_hfc_layer_energies__mutmut_25": _CPU,
    "hfc.xǁHFCLossǁbind__mutmut_6": _CPU,
    "hfc.xǁ_Compiledǁ__init____mutmut_9": _CPU,
    "hfc.xǁ_Compiledǁ__init____mutmut_18": _CPU,
    "hfc.xǁ_Compiledǁ__init____mutmut_20": _CPU,
    "hfc.xǁ_Planǁ__init____mutmut_41": _CPU,
    "hfc.xǁ_Planǁ__init____mutmut_44": _CPU,
    "hfc.xǁ_Planǁ__init____mutmut_46": _CPU,
    "hfc.x_hfc_components__mutmut_18": "_check_targets does not use its model argument",
    "hfc.x_hfc_layer_energies__mutmut_24": "_check_targets does not use its model argument",
    "hfc.xǁHFCLossǁbind__mutmut_5": "_check_targets does not use its model argument",
    "hfc.x_hfc_components__mutmut_30": "scaled only divides the energies by C_l; the components are chosen before",
    "hfc.x_hfc_components__mutmut_42": "as mutmut_30",
    "hfc.xǁ_Compiledǁ__init____mutmut_19": "the bias (log pi - 1/2 log det) kept in float64 instead of the features' "
                                           "dtype: only the argmax reads it, which differs only when two components "
                                           "tie to float32 precision",
    "hfc.xǁ_Compiledǁ__init____mutmut_21": "as mutmut_19",
    "hfc.xǁ_Planǁ__init____mutmut_12": "no single-class shortcut: the stacked / per-class path gives the same energies "
                                       "(test_a_row_s_energy_does_not_depend_on_the_other_rows); only slower",
    "hfc.xǁ_Planǁ__init____mutmut_13": "as mutmut_12",
    "hfc.xǁ_Planǁ__init____mutmut_26": "torch.full with the int fill -1 is int64 anyway",
    "hfc.xǁ_Planǁ__init____mutmut_29": "as mutmut_26",
    "hfc.xǁ_Planǁ__init____mutmut_3": "no targets: torch.unique of an empty tensor is empty, present = [] either way",
    "hfc.xǁ_Planǁ__init____mutmut_40": "as mutmut_3: the lookup of no targets is empty, like the targets",
    "hfc.xǁ_Planǁ__init____mutmut_32": "one more look-up entry, never read",
    "hfc.xǁ_Planǁ__init____mutmut_33": "the fill of look-up entries for classes without a mixture, never read "
                                       "(such targets are refused first)",
    "hfc.xǁ_Planǁ__init____mutmut_34": "as mutmut_33",
    # ---- attacks
    "attacks.x__linf_box__mutmut_25": "5 nudging rounds instead of 4: one ulp always suffices, the loop breaks first",
}
EQUIVALENT: dict[str, str] = {f"{PKG}.{k}": v for k, v in _EQ.items()}

# Calls whose string arguments only build error messages (a validator's `name` / `hint`).
MESSAGE_CALLS = ("check_", "_check", "_as_1d", "_as_outcomes", "_masked_outcomes", "_validate", "warn",
                 "_fail_message", "_check_fitted", "check_is_fitted")
KILLED = {1, 3, 24, -24, 36, 152, 255, -9, -11}  # a failing test, or a timeout / crash of the tests
SURVIVED, NO_TESTS = 0, 33


def patterns(modules: list[str]) -> list[str]:
    out = []
    for m in modules:
        src, funcs = SCOPES[m]
        mod = f"{PKG}." + src.removesuffix(".py").replace("/", ".").rstrip(".")
        out += [f"{mod}.{f}__mutmut_*" for f in funcs]
    return out


def module_of(name: str, modules: list[str]) -> str | None:
    for m in modules:
        if any(fnmatch.fnmatchcase(name, p) for p in patterns([m])):
            return m
    return None


# ------------------------------------------------------------------ is a mutant a message-only change?

def _is_message_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return any(name.startswith(p) or name == p for p in MESSAGE_CALLS)


def _diffs(a: ast.AST, b: ast.AST, in_message: bool, out: list[bool]) -> None:
    """Append, for each smallest differing node pair, whether it lies in a message."""
    if type(a) is not type(b):
        out.append(in_message)
        return
    if isinstance(a, ast.Raise):
        in_message = True  # the exception's arguments are its message
    if isinstance(a, ast.Call) and _is_message_call(a):
        # a string argument (a name, a hint) of a validator only builds its messages
        _diffs(a.func, b.func, in_message, out)
        for x, y in zip(a.args, b.args):
            _diffs(x, y, in_message or _str_or_none(x), out)
        if len(a.args) != len(b.args):
            dropped = a.args[len(b.args):] or b.args[len(a.args):]
            out.append(in_message or all(_str_or_none(x) for x in dropped))
        ka, kb = {k.arg: k.value for k in a.keywords}, {k.arg: k.value for k in b.keywords}
        for key in ka.keys() | kb.keys():
            if key in ka and key in kb:
                _diffs(ka[key], kb[key], in_message or _str_or_none(ka[key]), out)
            else:
                out.append(in_message or _str_or_none(ka.get(key, kb.get(key))))
        return
    for field, x in ast.iter_fields(a):
        if field in ("lineno", "col_offset", "end_lineno", "end_col_offset", "ctx", "type_comment"):
            continue
        y = getattr(b, field, None)
        if isinstance(x, list):
            if len(x) != len(y):
                out.append(in_message)
                continue
            for xi, yi in zip(x, y):
                if isinstance(xi, ast.AST):
                    _diffs(xi, yi, in_message, out)
                elif xi != yi:
                    out.append(in_message)
        elif isinstance(x, ast.AST):
            _diffs(x, y, in_message, out)
        elif x != y or type(x) is not type(y):
            out.append(in_message)


def _str_or_none(node) -> bool:
    return isinstance(node, ast.Constant) and (isinstance(node.value, str) or node.value is None) or isinstance(
        node, ast.JoinedStr)


def message_only(functions: dict[str, ast.AST], name: str) -> bool:
    func = name.rsplit(".", 1)[1]
    orig = functions.get(func.rsplit("__mutmut_", 1)[0] + "__mutmut_orig")
    mut = functions.get(func)
    if orig is None or mut is None:
        return False
    out: list[bool] = []
    for x, y in zip(orig.body, mut.body):
        _diffs(x, y, False, out)
    if len(orig.body) != len(mut.body):
        out.append(False)
    return bool(out) and all(out)


def functions_of(path: Path) -> dict[str, ast.AST]:
    tree = ast.parse(path.read_text())
    return {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


# ------------------------------------------------------------------ the run and the table

def run_mutmut(modules: list[str], jobs: int, resume: bool) -> float:
    if not resume:
        shutil.rmtree(REPO / "mutants", ignore_errors=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "benchmarks")] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("MEDADV_DATA", str(REPO.parent / "shared" / "data"))
    env["MEDADV_CACHE"] = tempfile.mkdtemp(prefix="medadv-mutation-cache-")
    env["MEDADV_TEST_THREADS"] = "1"
    env.setdefault("MEDADV_PROFILE", "ci")
    t0 = time.perf_counter()
    cmd = ["mutmut", "run", "--max-children", str(jobs), *patterns(modules)]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=REPO, env=env).returncode
    seconds = time.perf_counter() - t0
    shutil.rmtree(env["MEDADV_CACHE"], ignore_errors=True)
    if rc != 0:
        sys.exit(f"mutmut run failed (exit code {rc})")
    return seconds


def collect(modules: list[str]) -> dict[str, dict[str, list[str]]]:
    """module -> {killed, survived, message, equivalent, no_tests, other} -> mutant names."""
    table = {m: {k: [] for k in ("killed", "survived", "message", "equivalent", "no_tests", "other")} for m in modules}
    for meta in sorted((REPO / "mutants" / PKG).rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        functions = None
        for name, code in sorted(codes.items()):
            m = module_of(name, modules)
            if m is None:
                continue
            if code in KILLED:
                kind = "killed"
            elif code == SURVIVED:
                if functions is None:
                    functions = functions_of(meta.with_suffix(""))
                kind = ("equivalent" if name in EQUIVALENT else
                        "message" if message_only(functions, name) else "survived")
            elif code == NO_TESTS:
                kind = "no_tests"
            else:
                kind = "other"
            table[m][kind].append(name)
    return table


def report(table, seconds: float | None, show: bool) -> int:
    head = f"{'module':<10} {'mutants':>7} {'killed':>6} {'survived':>8} {'no tests':>8} {'message':>7} " \
           f"{'equiv.':>6} {'score':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    below = 0
    for m, kinds in table.items():
        n = sum(len(v) for v in kinds.values())
        counted = n - len(kinds["message"]) - len(kinds["equivalent"])
        score = len(kinds["killed"]) / counted if counted else float("nan")
        below += score < 0.95
        print(f"{m:<10} {n:>7} {len(kinds['killed']):>6} {len(kinds['survived']):>8} {len(kinds['no_tests']):>8} "
              f"{len(kinds['message']):>7} {len(kinds['equivalent']):>6} {score:>7.1%}")
    if seconds is not None:
        print(f"\nmutmut run: {seconds / 60:.1f} min")
    for kind, title in (("survived", "surviving mutants (a change of a result no test catches)"),
                        ("no_tests", "mutants of functions no selected test calls"),
                        ("other", "mutants with another outcome (suspicious, not checked)"),
                        ("message", "message-only mutants (no test matches the changed text)"),
                        ("equivalent", "equivalent mutants")):
        names = [n for kinds in table.values() for n in kinds[kind]]
        if not names:
            continue
        print(f"\n{title}: {len(names)}")
        for n in names:
            print("   ", n, f"-- {EQUIVALENT[n]}" if kind == "equivalent" else "")
            if show and kind in ("survived", "message"):
                diff = subprocess.run(["mutmut", "show", n], cwd=REPO, capture_output=True, text=True).stdout
                print("\n".join("        " + line for line in diff.splitlines()[2:] if line.strip()))
    return below


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"modules to mutate (default: all of {', '.join(SCOPES)})")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    parser.add_argument("--resume", action="store_true", help="keep mutants/ and the results of the last run")
    parser.add_argument("--report", action="store_true", help="only print the table of the last run")
    parser.add_argument("--show", action="store_true", help="print the diff of each surviving mutant")
    args = parser.parse_args()
    modules = args.modules or list(SCOPES)
    if set(modules) - set(SCOPES):
        parser.error(f"unknown module(s) {sorted(set(modules) - set(SCOPES))}; choose from {', '.join(SCOPES)}")
    seconds = None if args.report else run_mutmut(modules, args.jobs, args.resume)
    report(collect(modules), seconds, args.show)


if __name__ == "__main__":
    main()

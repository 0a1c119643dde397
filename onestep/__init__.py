"""onestep: distill a pretrained diffusion model into a one-step generator.

The public API (imported lazily, so ``import onestep`` stays cheap):

- ``load_config(path, overrides)``, ``Config``: the validated run configuration;
- ``build_trainer(config, run_dir)`` -> ``Trainer`` (``.fit()``, ``.iteration()``): distillation;
- ``available_objectives()``: the registered objective names (``onestep objectives`` prints
  their table; ``onestep.objectives`` is the package that defines them);
- ``OneStepPipeline``: the exported one-step diffusers pipeline;
- ``load_generator(run_dir, ema)``, ``export_run(run_dir, output)``: finished runs;
- data sets, FD and teacher evaluation, feature networks, the memory estimate: the rest of
  ``_API`` below, which the ``eval/`` scripts use (they import nothing else of onestep).
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_API = {
    # configuration and building
    "Config": ("onestep.config", "Config"),
    "load_config": ("onestep.build", "load_config"),
    "config_from_dict": ("onestep.config", "from_dict"),
    "config_to_dict": ("onestep.config", "to_dict"),
    "apply_overrides": ("onestep.config", "apply_overrides"),
    "build_trainer": ("onestep.build", "build_trainer"),
    "build_teacher": ("onestep.build", "build_teacher"),
    "Trainer": ("onestep.train.trainer", "Trainer"),
    "OnestepError": ("onestep.errors", "OnestepError"),
    # runs, generators, pipelines
    "OneStepPipeline": ("onestep.portable.pipeline", "OneStepPipeline"),
    "load_generator": ("onestep.runs", "load_generator"),
    "checkpoint_of": ("onestep.runs", "checkpoint_of"),
    "export_run": ("onestep.export", "export_run"),
    "load_pipeline": ("onestep.export", "load_pipeline"),
    "export_lora": ("onestep.export_lora", "export_lora"),
    "LoraSettings": ("onestep.nets.lora", "LoraSettings"),
    "OneStepGenerator": ("onestep.nets.generator", "OneStepGenerator"),
    "generate": ("onestep.core.samplers", "generate"),
    "latest_checkpoint": ("onestep.core.rundir", "latest_checkpoint"),
    # data
    "load_named": ("onestep.data.datasets", "load_named"),
    "load_fashion_mnist": ("onestep.data.fashion", "load_fashion_mnist"),
    "GaussianMixture": ("onestep.teachers.gmm", "GaussianMixture"),
    "F_NAMES": ("onestep.objectives.fdiv", "F_NAMES"),
    # evaluation
    "FDScorer": ("onestep.evaluation.fd", "FDScorer"),
    "compute_metrics": ("onestep.evaluation.fidelity", "compute_metrics"),
    "make_reference": ("onestep.evaluation.fidelity", "make_reference"),
    "evaluate_images": ("onestep.evaluation.score", "evaluate"),
    "default_features": ("onestep.evaluation.score", "default_features"),
    "nfe_sweep": ("onestep.evaluation.nfe", "nfe_sweep"),
    "student_samples": ("onestep.evaluation.nfe", "student_samples"),
    "teacher_samples_at": ("onestep.evaluation.nfe", "teacher_samples_at"),
    "copy_report": ("onestep.evaluation.copy_check", "copy_report"),
    "with_held_out": ("onestep.evaluation.copy_check", "with_held_out"),
    "data_copying": ("onestep.evaluation.copy_check", "data_copying"),
    "DataCopyingTest": ("onestep.evaluation.copy_check", "DataCopyingTest"),
    "has_held_out": ("onestep.evaluation.copy_check", "has_held_out"),
    "nearest_distances": ("onestep.evaluation.copy_check", "nearest_distances"),
    "distance_quantiles": ("onestep.evaluation.copy_check", "distance_quantiles"),
    "discriminator_summary": ("onestep.evaluation.discriminator", "discriminator_summary"),
    "SPREAD_EDGES": ("onestep.core.rundir", "SPREAD_EDGES"),
    "uni_instruct_pushes": ("onestep.objectives.uni_instruct", "pushes"),
    "objective_gradient_scale": ("onestep.objectives.registry", "gradient_scale"),
    "Plan": ("onestep.distill.plan", "Plan"),
    "evaluate_mixture_samples": ("onestep.evaluation.gmm_metrics", "evaluate_samples"),
    "read_stats": ("onestep.evaluation.plots", "read_stats"),
    "save_fd_plot": ("onestep.evaluation.plots", "save_fd_plot"),
    "save_grid": ("onestep.core.images", "save_grid"),
    "TeacherProtocol": ("onestep.evaluation.teacher_eval", "TeacherProtocol"),
    "evaluate_teacher": ("onestep.evaluation.teacher_eval", "evaluate_teacher"),
    "PARTIAL_FILE": ("onestep.evaluation.teacher_eval", "PARTIAL_FILE"),
    "save_teacher_grid": ("onestep.evaluation.teacher_eval", "save_teacher_grid"),
    "read_evaluation": ("onestep.evaluation.teacher_eval", "read_evaluation"),
    "write_evaluation": ("onestep.evaluation.teacher_eval", "write_evaluation"),
    "PRESETS": ("onestep.demo", "PRESETS"),
    # the feature networks of FD-digits and FD-fashion
    "DigitsClassifier": ("onestep.evaluation.digits_features", "DigitsClassifier"),
    "FashionClassifier": ("onestep.evaluation.fashion_features", "FashionClassifier"),
    "train_classifier": ("onestep.evaluation.classifier_training", "train_classifier"),
    "classifier_accuracy": ("onestep.evaluation.classifier_training", "accuracy"),
    # files and scale
    "atomic_save": ("onestep.core.io", "atomic_save"),
    "atomic_write_text": ("onestep.core.io", "atomic_write_text"),
    "memory_estimate": ("onestep.train.memory", "estimate"),
    "teacher_skeleton": ("onestep.train.memory", "skeleton"),
    "GIB": ("onestep.train.memory", "GIB"),
    # the pieces the speed benchmarks time
    "frozen": ("onestep.core.modules", "frozen"),
    "cat_cond": ("onestep.core.tensors", "cat_cond"),
    "to_device": ("onestep.core.tensors", "to_device"),
    "cycled_labels": ("onestep.core.tensors", "cycled_labels"),
    "apply_attention": ("onestep.nets.attention", "apply_attention"),
    "ATTENTION_BACKENDS": ("onestep.nets.attention", "BACKENDS"),
}

__all__ = [*_API, "available_objectives"]


def available_objectives() -> list[str]:
    """Names of the registered generator objectives."""
    from .objectives import available

    return available()


def __getattr__(name: str):
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'onestep' has no attribute '{name}'")

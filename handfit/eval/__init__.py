"""Accuracy evaluation on labelled photos: ``handfit eval`` as a library.

* :mod:`~handfit.eval.records`: the record type (image, K, labelled hands in MediaPipe order, metres);
* :mod:`~handfit.eval.datasets`: readers (dev3d ``.gt.json``, FreiHAND, HO3D, InterHand2.6M, RHD);
* :mod:`~handfit.eval.metrics`: PA-MPJPE, root-relative MPJPE, PCK/AUC, 2D error (batched numpy);
* :mod:`~handfit.eval.session`: what both evaluations share: :class:`EvalSession` (options, Resources,
  detector, fitting function, warm-up, progress bar, teardown), detecting once and fitting the matches;
* :mod:`~handfit.eval.run`: :func:`evaluate` (detect once, fit, measure every variant);
* :mod:`~handfit.eval.sequence`: :func:`evaluate_sequences` (runs of frames, each fitted as one track,
  the acceleration error and the texture scores);
* :mod:`~handfit.eval.texture`: texture scores: a texture's albedo render against a photo (seen, novel,
  flat, leave-one-out);
* :mod:`~handfit.eval.report`: ``metrics.json``, ``per_image.csv``, ``pck.json``, ``predictions.json``, ``pck.png``.

Example::

    from handfit.eval import open_dataset, select, evaluate, write_report
    ev = evaluate(select(open_dataset("../shared/data/dev3d"), limit=10))
    print(ev.summary["dense"]["pa_mpjpe_mm"])
    write_report(ev, "eval_out")
"""

_EXPORTS = {
    "FORMATS": "datasets", "DatasetError": "datasets", "open_dataset": "datasets", "select": "datasets",
    "read_runs": "datasets", "evaluate_sequences": "sequence", "SEQUENCE_VARIANTS": "sequence",
    "texture_scores": "texture", "run_scores": "texture",
    "HandLabel": "records", "Record": "records",
    "evaluate": "run", "Evaluation": "run", "VARIANTS": "run", "EvalSession": "session",
    "write_report": "report", "summary_table": "report", "texture_table": "report",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    # Lazy, so that registering the `handfit eval` command keeps `handfit --version` instant.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'handfit.eval' has no attribute {name!r}")

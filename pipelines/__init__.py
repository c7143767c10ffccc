"""The studies and release pipelines of mofbalora: run as ``python -m pipelines.<name>`` or by make.

Not part of the installed package; they import ``mofbalora`` and each other as ``pipelines.*``.
Shared provenance helpers live in :mod:`pipelines.provenance`, the reports' statistics in
:mod:`pipelines.analysis`.
"""

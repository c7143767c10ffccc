"""The study's analysis: metrics with bootstrap CIs, claim verdicts, figures and the report.

It reads prediction arrays only; it never imports training code.
"""

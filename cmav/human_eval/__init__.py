"""Human evaluation studies: make a blinded rating study from trained runs, analyse the ratings.

``cmav human-eval make`` (:func:`make_study`) samples validation pairs, makes one image per
method and pair (plus the real frame as reference and hidden attention checks) and writes a
study folder with a self-contained rating page; ``cmav human-eval analyze``
(:func:`run_analysis`) validates the raters' files against the study's manifest and reports
scores with CIs, per-class scores, Krippendorff's alpha and pairwise Wilcoxon tests.
See ``human_eval/README.md`` at the top of the repository.
"""

from cmav.human_eval.errors import HumanEvalError
from cmav.human_eval.study import DEFAULT_QUESTIONS, Manifest, Question, load_manifest, load_questions, rater_order

__all__ = [
    "DEFAULT_QUESTIONS",
    "HumanEvalError",
    "Manifest",
    "Question",
    "load_manifest",
    "load_questions",
    "make_study",
    "rater_order",
    "run_analysis",
]


def __getattr__(name: str):
    # the heavy halves (torch for making, scipy/matplotlib for analysing) load only when used
    if name == "make_study":
        from cmav.human_eval.build import make_study

        return make_study
    if name == "run_analysis":
        from cmav.human_eval.report import run_analysis

        return run_analysis
    raise AttributeError(name)

"""Running a search: the stages, the one trial function and the executors around it.

The stages of a search (``stages``: ``SearchConfig``, ``run_search``), the strategies that fill its
search stage (``strategies``: multi-trial, one-shot), the trial function (``trial``), calibration and
confirmation runs (``confirm``), early stopping (``earlystop``), progress lines (``progress``), the
one-shot strategy's supernet ranking (``oneshot``, its path evaluators in this process or on Ray in
``pathpools``) and the executors: Optuna processes (``optuna_backend``) and Ray Tune
(``ray_backend``, ``ray_runs``, and ``ray_watchdog``, which ends a local Ray with its search).

May import: ``se_nas.design``, ``se_nas.nn``, ``se_nas.record``.
"""

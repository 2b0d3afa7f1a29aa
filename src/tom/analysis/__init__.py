"""Reading finished runs, tidy summaries and the statistics the figures and tables report.

    aggregate.py  run directories -> results/summary/*.csv (tidy, one row per observation)
    stats.py      bootstrap confidence intervals of the mean, interquartile mean (IQM)
    style.py      one colour and label per method, figure provenance (needs matplotlib)
    tables.py     LaTeX table helpers for the tables notebook

Only ``aggregate`` and ``stats`` are imported by the library itself; ``style`` needs the
``pipeline`` extra (matplotlib, seaborn) and is imported by the notebooks.
"""

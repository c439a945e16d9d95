"""federator benchmarks: ``python -m bench`` measures federator and the alternatives in one run.

    python -m bench                 # small sizes: a few minutes on 2 cores
    python -m bench --full          # the issue's sizes: 2,000,000-row scans, TPC-H SF1, 10M stream
    python -m bench --pg DSN --mysql DSN   # use running servers instead of starting them

Every figure in the printed table (and ``bench/results/latest.md``) comes from the same run;
ratios compare numbers measured minutes apart on the same machine, never against a record.
"""

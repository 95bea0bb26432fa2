"""The bad-input probe of issue 10: a table of faulty inputs (``cases.py``), each run through the real command
line and judged CLEAN / TRACEBACK / BAD (``probe.py``). ``tests/test_bad_input_table.py`` runs the table as
tests; ``python tests/badinput/probe.py --write-docs`` prints the counts and writes ``docs/bad_input.md``."""

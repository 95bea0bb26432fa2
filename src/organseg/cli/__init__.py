"""Command line: ``organseg VERB ...``; one module per verb, each with ``add_parser`` and ``run``."""

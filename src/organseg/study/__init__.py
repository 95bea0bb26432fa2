"""Study code of ``organseg compare``: data-efficiency figures and the SLURM launcher."""

"""Studies: the only layer that composes victim + defence + attacks + metrics.

One grid runner (:mod:`medsec.studies.grid`) and one module per study. Importing this package is cheap;
each study module imports what it needs.
"""

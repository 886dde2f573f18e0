"""Proof that an export answers like its eager model: `verify` (beit-deploy's own figures and verdicts) and
`compare` (Polygraphy's Comparator over the backends)."""

"""``python -m archivist`` runs the command line."""

from archivist.cli import main

main()

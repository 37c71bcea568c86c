"""The command-line entry points, each a thin :func:`~simlearn.cli.common.hydra_command` over a library function:

``simlearn-train`` (:mod:`.train`), ``simlearn-eval`` (:mod:`.eval`), ``simlearn-embed`` (:mod:`.embed`),
``simlearn-search`` (:mod:`.search`), ``simlearn-export`` (:mod:`.export`), ``simlearn-collect`` (:mod:`.collect`).
Library modules never import this package.
"""

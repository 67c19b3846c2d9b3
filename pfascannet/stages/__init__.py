"""The stages of the pipeline as absl mains: ``pfascannet <stage> [flags]``.

Each module defines its absl flags and ``main(argv)`` (and may define
``prepare_argv(argv)``, a rewrite of the command line before absl parses it).
The flags are generated from the fields of the dataclasses in the module's
``SETTINGS`` (``settings.define_stage_flags``): the library's settings the
stage builds, and a small ``<Stage>Command`` dataclass for the rest (paths,
model choices); no stage calls ``flags.DEFINE_*`` itself.
absl flags are global, so a process imports exactly one stage module: the
``pfascannet`` command imports only the stage it is asked for, and each
script in ``experiments/``, ``eval/`` and ``data_prep/`` imports only its own.
Both run the main through :func:`pfascannet.cliutil.run_main`, so flags,
``--help``, exit statuses and ``error:`` lines are the same either way.
Nothing here is imported by the library.
"""

"""``vmforensics survey local PATH``: a datastore or folder of VM folders reachable as files.

(``acquire local`` stays in vmforensics/cli/acquire_local.py, beside ``acquire files``.)
"""

from __future__ import annotations

import argparse

from vmforensics.cli.survey import add_survey_options, finish, thresholds_from_args


def register_survey(sources: argparse._SubParsersAction) -> None:
    local = sources.add_parser("local", help="a datastore or folder of VM folders reachable as files")
    local.add_argument("path", help="the datastore (or any folder above VM folders)")
    add_survey_options(local)
    local.set_defaults(handler=_run_survey)


def _run_survey(args: argparse.Namespace) -> int:
    from vmforensics.hypervisors.local.survey import survey_local

    return finish(survey_local(args.path, thresholds=thresholds_from_args(args)), args)

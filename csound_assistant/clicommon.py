"""Options and error handling shared by the stage commands."""

import contextlib

import click

from .constants import ENV_RUN_NAME, ENV_WORK_DIR
from .errors import CsoundAssistantError

work_dir_option = click.option(
    "--work-dir", envvar=ENV_WORK_DIR, type=click.Path(), default=None,
    help=f"Where runs are kept [env {ENV_WORK_DIR}; default: ./runs].",
)
run_option = click.option(
    "--run", envvar=ENV_RUN_NAME, default=None,
    help=f"Run name: a sub-folder of the work dir [env {ENV_RUN_NAME}; default: default].",
)
force_option = click.option(
    "--force", is_flag=True, help="Replace an existing output (kept until the new one is complete)."
)


@contextlib.contextmanager
def domain_errors():
    """Turn the project's exceptions into one-line click errors (exit status 1)."""
    try:
        yield
    except CsoundAssistantError as exc:
        raise click.ClickException(str(exc)) from None

"""``python -m capsrobust_cli``: the same as the ``capsrobust`` console script."""

from capsrobust_cli.main import cli

cli()

"""`python -m xwin_data.cli`: the same command as the `xwin-data` console script."""
from xwin_data.cli.app import main

main()

"""``python -m siamface`` (and ``torchrun -m siamface``): the same CLI as the console script."""

from siamface.cli.main import main

raise SystemExit(main())

"""``python -m deployer.model_server``."""

from deployer.model_server.main import main

raise SystemExit(main())

"""The job service's client side: the HTTP client (:mod:`ddray.client.http`) and the CLI commands using it
(:mod:`ddray.client.commands`). Nothing here imports the service (``api``): it runs wherever ``ddray`` is installed."""

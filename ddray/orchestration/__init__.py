"""Everything that talks to Ray: connecting, actors, the coarse task, Tune and Train jobs."""

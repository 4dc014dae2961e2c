"""The coarse level beyond one DNN after every local CNN (issue #14, docs/coarse.md).

- :mod:`.regions`: which subdomains form a region of a multilevel coarse net (pure, no torch).
- :mod:`.multilevel`: regional DNNs, then the global DNN on their outputs.
- :mod:`.streaming`: the DNN refitted as subdomains finish, missing ones at the class prior.
"""

"""Helpers for running flora on real SuperLink / SuperNode processes (``flora_tools/deploy.py``).

- ``tls``: a throw-away CA, the SuperLink's server certificate and SuperNode key pairs;
- ``processes``: start long-running processes with a log file each, and stop them together
  with everything they spawned (Flower detaches its SuperExec children into new sessions);
- ``flwr_cli``: the ``flwr`` CLI's connection file and the JSON answers of ``flwr list`` /
  ``flwr supernode ls``;
- ``deployment``: one SuperLink plus N SuperNodes on loopback, as one object that cleans up.
"""

"""The command line, ``python -m gradx``: ``compare`` and ``race``, on the public API only.

* ``data``: the digits (bundled with scikit-learn) and MNIST (downloaded once to a cache);
* ``compare``: every optimizer trains the digit network at its own best learning rate;
* ``race``: every optimizer on the classic test functions (Rosenbrock, Beale, ...).
"""
